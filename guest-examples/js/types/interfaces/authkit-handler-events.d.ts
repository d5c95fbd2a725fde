/// <reference path="./authkit-handler-types.d.ts" />
declare module 'authkit:handler/events@0.1.0' {
  /**
   * Called once per event, in order per user: events about the same user
   * arrive one at a time, oldest first. The host has already brought its
   * users table up to date with this event, in the same transaction.
   * 
   * Return `ok` to commit everything this call wrote. Return `error`
   * (with a message for the operator) to roll it all back and have the
   * event retried later; after the last attempt it is dead-lettered.
   */
  export function handle(event: Event): void;
  export type Json = import('authkit:handler/types@0.1.0').Json;
  export type User = import('authkit:handler/types@0.1.0').User;
  /**
   * One WorkOS event, as its webhook delivered it.
   */
  export interface Event {
    /**
     * WorkOS event id (`event_...`): the same on every delivery and retry.
     */
    id: string,
    /**
     * The event type, e.g. `user.created`.
     */
    eventType: string,
    /**
     * The event's `data`, exactly as WorkOS sent it: a JSON object.
     */
    data: Json,
    /**
     * The event's `created_at` (RFC 3339), when WorkOS sent one.
     */
    createdAt?: string,
    /**
     * For `user.created`, `user.updated` and `user.deleted`: `data` as a
     * typed user. A `user.deleted` may carry only the id.
     */
    user?: User,
    /**
     * 1 on the first try, 2 on the first retry, and so on.
     */
    attempt: number,
  }
}
