export * from './types.ts';
export * from './resource.ts';
export * from './service-backends.ts';
export * from './store/index.ts';
