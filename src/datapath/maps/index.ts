// Codecs and typed operations for the datapath's maps, one module per map.
export * as ipcache from './ipcache.ts';
export * as endpoints from './endpoints.ts';
export * as metrics from './metrics.ts';
export * as events from './events.ts';
export * as settings from './settings.ts';
export * as config from './config.ts';
export * as services from './services.ts';
export * as backends from './backends.ts';
export * as backendSlots from './backend-slots.ts';
export * as maglev from './maglev.ts';
export * as revnat from './revnat.ts';
export * as ct from './ct.ts';
export * as affinity from './affinity.ts';
export * as sock from './sock.ts';
export * as policy from './policy.ts';
export * as policyEntries from './policy-entries.ts';
export * from './reasons.ts';
export type { MapHandle, StructLayout, FieldLayout } from './codec.ts';
