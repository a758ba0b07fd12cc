// A bad option or config field, named as the user typed it (its own module: `lab workload dns` checks for it without loading the apiserver's options and metrics).
export class OptionError extends Error {
  constructor(
    /** The option as typed, e.g. `--cluster-id`, or a file path with a field. */
    readonly option: string,
    readonly detail: string,
  ) {
    super(`${option}: ${detail}`);
    this.name = 'OptionError';
  }
}
