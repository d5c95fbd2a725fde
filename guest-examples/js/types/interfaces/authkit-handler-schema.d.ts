declare module 'authkit:handler/schema@0.1.0' {
  /**
   * The indexes this handler's `db.find` calls use.
   */
  export function indexes(): Array<Index>;
  /**
   * An equality index on a top-level field of a table's documents.
   */
  export interface Index {
    /**
     * The table name (same rule as in `db`).
     */
    table: string,
    /**
     * The top-level field to index (same rule as a table name).
     */
    field: string,
  }
}
