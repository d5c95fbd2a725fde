declare module 'authkit:handler/types@0.1.0' {
  /**
   * JSON text (RFC 8259), UTF-8.
   */
  export type Json = string;
  /**
   * A WorkOS user, as the host keeps it in its users table. The host keeps
   * this table in step with WorkOS's `user.*` events on its own, before a
   * handler sees them. Times are RFC 3339 text, as WorkOS sends them.
   */
  export interface User {
    /**
     * WorkOS user id, `user_...`.
     */
    id: string,
    /**
     * The primary email address.
     */
    email?: string,
    /**
     * Whether WorkOS has verified `email`.
     */
    emailVerified?: boolean,
    firstName?: string,
    lastName?: string,
    /**
     * The display name WorkOS sends, when it sends one.
     */
    name?: string,
    /**
     * A URL of the user's picture.
     */
    profilePictureUrl?: string,
    /**
     * When the user last signed in.
     */
    lastSignInAt?: string,
    /**
     * The user's locale, e.g. `en-US`.
     */
    locale?: string,
    /**
     * The id the application gave this user in WorkOS, if any.
     */
    externalId?: string,
    /**
     * The user's WorkOS metadata: a JSON object, `{}` when there is none.
     */
    metadata: Json,
    /**
     * When WorkOS created the user.
     */
    createdAt?: string,
    /**
     * When WorkOS last changed the user; the host keeps the newest version.
     */
    updatedAt?: string,
  }
}
