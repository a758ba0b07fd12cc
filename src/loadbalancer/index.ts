// Backend selection for services: which backends take new connections
// (readiness, topology affinity), how they are spread (slot table or
// Maglev), stable ids, and the resulting contents of the service maps.
export * from './maglev.ts';
export * from './select.ts';
export * from './ids.ts';
export * from './plan.ts';
