/// <reference path="./interfaces/authkit-handler-actions.d.ts" />
/// <reference path="./interfaces/authkit-handler-db.d.ts" />
/// <reference path="./interfaces/authkit-handler-events.d.ts" />
/// <reference path="./interfaces/authkit-handler-log.d.ts" />
/// <reference path="./interfaces/authkit-handler-queries.d.ts" />
/// <reference path="./interfaces/authkit-handler-schema.d.ts" />
/// <reference path="./interfaces/authkit-handler-types.d.ts" />
/// <reference path="./interfaces/authkit-handler-users.d.ts" />
declare module 'authkit:handler/full-handler@0.1.0' {
  export type * as AuthkitHandlerDb010 from 'authkit:handler/db@0.1.0'; // import authkit:handler/db@0.1.0
  export type * as AuthkitHandlerLog010 from 'authkit:handler/log@0.1.0'; // import authkit:handler/log@0.1.0
  export type * as AuthkitHandlerTypes010 from 'authkit:handler/types@0.1.0'; // import authkit:handler/types@0.1.0
  export type * as AuthkitHandlerUsers010 from 'authkit:handler/users@0.1.0'; // import authkit:handler/users@0.1.0
  export * as events from 'authkit:handler/events@0.1.0'; // export authkit:handler/events@0.1.0
  export * as actions from 'authkit:handler/actions@0.1.0'; // export authkit:handler/actions@0.1.0
  export * as queries from 'authkit:handler/queries@0.1.0'; // export authkit:handler/queries@0.1.0
  export * as schema from 'authkit:handler/schema@0.1.0'; // export authkit:handler/schema@0.1.0
}
