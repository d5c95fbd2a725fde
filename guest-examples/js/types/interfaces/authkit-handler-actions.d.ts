/// <reference path="./authkit-handler-types.d.ts" />
declare module 'authkit:handler/actions@0.1.0' {
  /**
   * Called when a user signs in.
   */
  export function authenticate(ctx: AuthenticationContext): Verdict;
  /**
   * Called when a user registers.
   */
  export function registerUser(ctx: RegistrationContext): Verdict;
  export type Json = import('authkit:handler/types@0.1.0').Json;
  export type User = import('authkit:handler/types@0.1.0').User;
  /**
   * The client the request comes from, as WorkOS saw it.
   */
  export interface Client {
    ipAddress?: string,
    userAgent?: string,
    deviceFingerprint?: string,
    /**
     * How the user is authenticating, e.g. `password`, `oauth`, `sso`.
     */
    authenticationMethod?: string,
  }
  /**
   * The organization a sign-in is for, when there is one.
   */
  export interface Organization {
    /**
     * WorkOS organization id, `org_...`.
     */
    id: string,
    name?: string,
  }
  /**
   * The user's membership in that organization, when there is one.
   */
  export interface Membership {
    /**
     * WorkOS membership id, `om_...`.
     */
    id: string,
    organizationId?: string,
    /**
     * The role's slug, e.g. `member`.
     */
    role?: string,
    /**
     * e.g. `active`, `pending`, `inactive`.
     */
    status?: string,
  }
  /**
   * A user signing in.
   */
  export interface AuthenticationContext {
    /**
     * The action's id: the same if WorkOS retries it.
     */
    id: string,
    /**
     * The user, as WorkOS sent it (it may be newer than the host's users table).
     */
    user: User,
    organization?: Organization,
    membership?: Membership,
    client: Client,
    /**
     * The whole request body WorkOS sent.
     */
    raw: Json,
  }
  /**
   * What a new user typed in to register.
   */
  export interface UserData {
    email: string,
    firstName?: string,
    lastName?: string,
    name?: string,
  }
  /**
   * A user registering.
   */
  export interface RegistrationContext {
    /**
     * The action's id: the same if WorkOS retries it.
     */
    id: string,
    userData: UserData,
    /**
     * The invitation being accepted, when there is one (its id).
     */
    invitationId?: string,
    client: Client,
    /**
     * The whole request body WorkOS sent.
     */
    raw: Json,
  }
  /**
   * The decision.
   */
  export type Verdict = VerdictAllow | VerdictDeny;
  export interface VerdictAllow {
    tag: 'allow',
  }
  /**
   * Deny, with a message WorkOS shows the user (at most 500 characters
   * are sent).
   */
  export interface VerdictDeny {
    tag: 'deny',
    val: string,
  }
}
