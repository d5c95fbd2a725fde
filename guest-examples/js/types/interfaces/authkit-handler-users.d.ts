/// <reference path="./authkit-handler-types.d.ts" />
declare module 'authkit:handler/users@0.1.0' {
  /**
   * The user with this WorkOS id, if the host has it.
   */
  export function get(id: string): User | undefined;
  /**
   * The user with this email address (compared exactly), if any.
   */
  export function getByEmail(email: string): User | undefined;
  /**
   * The user with this external id, if any.
   */
  export function getByExternalId(externalId: string): User | undefined;
  export type User = import('authkit:handler/types@0.1.0').User;
  /**
   * Why a lookup was not made.
   */
  export type Error = ErrorTooManyCalls;
  /**
   * The invocation has used all of its calls (the limit is carried).
   */
  export interface ErrorTooManyCalls {
    tag: 'too-many-calls',
    val: number,
  }
}
