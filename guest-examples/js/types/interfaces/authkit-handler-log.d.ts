declare module 'authkit:handler/log@0.1.0' {
  /**
   * Records one line. Beyond the per-invocation cap it is counted and dropped.
   */
  export function log(level: Level, message: string): void;
  /**
   * How much the line matters, as in most logging libraries.
   * # Variants
   * 
   * ## `"trace"`
   * 
   * ## `"debug"`
   * 
   * ## `"info"`
   * 
   * ## `"warn"`
   * 
   * ## `"error"`
   */
  export type Level = 'trace' | 'debug' | 'info' | 'warn' | 'error';
}
