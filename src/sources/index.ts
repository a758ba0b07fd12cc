export * from './types.ts';
export * from './resource.ts';
export * from './store/index.ts';
