export * from './types.ts';
export * from './cidr.ts';
export * from './selector.ts';
export * from './schema.ts';
export * from './parse.ts';
export * from './decide.ts';
export * from './resolver.ts';
