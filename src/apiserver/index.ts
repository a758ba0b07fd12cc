export * from './options.ts';
export * from './convert.ts';
export * from './export.ts';
export * from './identities.ts';
export * from './heartbeat.ts';
export * from './apiserver.ts';
export { apiserverCommand } from './command.ts';
