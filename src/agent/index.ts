// The node agent: what src/agent/ offers.
export * from './agent.ts';
export * from './config.ts';
export * from './reconciler.ts';
export * from './resync-grace.ts';
export * from './ipcache-desired.ts';
export * from './endpoints.ts';
export * from './store-publisher.ts';
export * from './datapath.ts';
export * from './status.ts';
export * from './types.ts';
export { endpointRequestSchema } from './endpoint-request.ts';
export { AgentClient, AgentUnavailableError, type AgentClientOptions } from './client.ts';
export { startApiServer, type ApiHandlers, type ApiServer } from './api.ts';
export { agentCommand } from './command.ts';
export { applyNodePlan, type ApplySummary } from './apply-plan.ts';
export * from './node-plan.ts';
