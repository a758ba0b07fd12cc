export * from './labels.ts';
export * from './keys.ts';
export * from './allocator.ts';
