// libbpf through koffi: objects, maps, programs, tc attachment, ring buffers.
export { BpfObject, type OpenOptions } from './object.ts';
export { BpfMap, MapType, type MapInfo, type UpdateFlag, joinPerCpu, mapInfoByFd, numPossibleCpus, splitPerCpu } from './map.ts';
export { BpfProgram, SK_BUFF_SIZE, TcAction, skbContext, type SkbContextFields, type TestRunOptions, type TestRunResult } from './program.ts';
export { TcAttachment, ifindexOf, tcAttach, tcAttachMode, tcDetach, tcDetachAll, tcFind, tcHookDestroy, tcQuery, tcxAvailable, tcxList, tcxPrograms, type TcAttachMode, type TcAttachOptions, type TcAttachPreference, type TcDirection, type TcSlot } from './tc.ts';
export { RingBufferReader, readRingBuffer, type RingBufferHandler } from './ringbuf.ts';
export { setLibbpfLogHandler, type LibbpfLogLevel } from './ffi.ts';
export { CGROUP_ATTACH_TYPE, attachCgroupPinned, cgroupQuery, detachPinnedLink, isCgroup2Dir, programId, type CgroupHook } from './cgroup.ts';
