export * from './kinds.ts';
export * from './convert.ts';
export * from './http.ts';
export * from './kubeconfig.ts';
export * from './reflector.ts';
export * from './source.ts';
