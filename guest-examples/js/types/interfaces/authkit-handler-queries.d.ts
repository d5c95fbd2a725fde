/// <reference path="./authkit-handler-types.d.ts" />
declare module 'authkit:handler/queries@0.1.0' {
  /**
   * Runs the query `name` with `args-json` (the request body as JSON text,
   * `null` when the body is empty). `caller` is none when the request sent
   * no token. Return the answer as JSON text (the HTTP 200 body), or an error
   * message for the app (an HTTP 400 with that message). A token that does
   * not verify, or a user not yet synced, never reaches the guest.
   */
  export function run(name: string, argsJson: string, caller: Caller | undefined): string;
  export type User = import('authkit:handler/types@0.1.0').User;
  /**
   * Who is calling: the synced user the request's access token is for, and
   * the token's session claims.
   */
  export interface Caller {
    user: User,
    /**
     * The token's `sid`.
     */
    sessionId?: string,
    /**
     * The token's `org_id`: the organization the session is in, if any.
     */
    organizationId?: string,
    /**
     * The token's `role` in that organization.
     */
    role?: string,
    /**
     * The token's `permissions`.
     */
    permissions: Array<string>,
  }
}
