export * from './keys.ts';
export * from './writer.ts';
export * from './source.ts';
