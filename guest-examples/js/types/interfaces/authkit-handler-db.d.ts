/// <reference path="./authkit-handler-types.d.ts" />
declare module 'authkit:handler/db@0.1.0' {
  /**
   * Stores a new document; returns its id.
   */
  export function insert(table: string, body: Json): string;
  /**
   * The document with this id, or `none`.
   */
  export function get(table: string, id: string): Document | undefined;
  /**
   * Shallow merge: each top-level field of `fields` replaces the
   * document's field of that name; a field whose value is `null` is removed.
   * Returns the document as stored after the change.
   */
  export function patch(table: string, id: string, fields: Json): Document;
  /**
   * Replaces the whole body (the id and creation time stay).
   */
  export function replace(table: string, id: string, body: Json): Document;
  /**
   * Removes the document; `false` if there was none.
   */
  export { _delete as delete };
  function _delete(table: string, id: string): boolean;
  /**
   * The documents whose top-level `field` equals `value` (JSON: a string,
   * number, boolean or null; `1` and `1.0` are equal), in id order.
   * The field must be declared as an index of the table; lookups stay fast
   * however large the table grows. `limit` is capped at 100.
   */
  export function find(table: string, field: string, value: Json, limit: number, cursor: string | undefined): Page;
  /**
   * Every document of the table, in id order, one page at a time.
   * `limit` is capped at 100.
   */
  export function list(table: string, limit: number, cursor: string | undefined): Page;
  export type Json = import('authkit:handler/types@0.1.0').Json;
  /**
   * A stored document.
   */
  export interface Document {
    /**
     * Assigned by the host at insert; unique in its table. Ids sort in
     * insertion order.
     */
    id: string,
    /**
     * When it was inserted, in unix milliseconds.
     */
    createdAt: bigint,
    /**
     * When it was last inserted, patched or replaced, in unix milliseconds.
     */
    updatedAt: bigint,
    /**
     * The document: a JSON object.
     */
    body: Json,
  }
  /**
   * One page of a `find` or `list`.
   */
  export interface Page {
    /**
     * In id order (insertion order).
     */
    documents: Array<Document>,
    /**
     * Pass this back to get the next page; `none` when there is no more.
     */
    nextCursor?: string,
  }
  /**
   * Why a `db` call did nothing. The call changed nothing in every case.
   */
  export type Error = ErrorInvalidTableName | ErrorInvalidDocument | ErrorDocumentTooLarge | ErrorNotFound | ErrorNotIndexed | ErrorInvalidValue | ErrorInvalidCursor | ErrorTooManyCalls | ErrorReadOnly;
  /**
   * The table name breaks the naming rule; the text says how.
   */
  export interface ErrorInvalidTableName {
    tag: 'invalid-table-name',
    val: string,
  }
  /**
   * The body is not a JSON object, or is not valid JSON.
   */
  export interface ErrorInvalidDocument {
    tag: 'invalid-document',
    val: string,
  }
  /**
   * The document would be larger than this many bytes of JSON.
   */
  export interface ErrorDocumentTooLarge {
    tag: 'document-too-large',
    val: number,
  }
  /**
   * No document with this id in this table (`patch` and `replace`).
   */
  export interface ErrorNotFound {
    tag: 'not-found',
  }
  /**
   * `find` on a field the handler did not declare as an index of the
   * table (see the `schema` interface). Carries the field name.
   */
  export interface ErrorNotIndexed {
    tag: 'not-indexed',
    val: string,
  }
  /**
   * The value given to `find` is not a string, number, boolean or null.
   */
  export interface ErrorInvalidValue {
    tag: 'invalid-value',
    val: string,
  }
  /**
   * The cursor was not one this table's `find` or `list` handed out.
   */
  export interface ErrorInvalidCursor {
    tag: 'invalid-cursor',
  }
  /**
   * The invocation has used all of its calls (the limit is carried).
   */
  export interface ErrorTooManyCalls {
    tag: 'too-many-calls',
    val: number,
  }
  /**
   * Writes are not allowed in this kind of call.
   */
  export interface ErrorReadOnly {
    tag: 'read-only',
  }
}
