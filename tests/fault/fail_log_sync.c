/*
 * A failing disk under the database, for the lifecycle and tenants tests:
 * loaded into authkit-host with LD_PRELOAD, it makes
 * - fsync and fdatasync of the log, `authkit.db-wal`, fail with EIO while the
 *   file named by AUTHKIT_TEST_FAIL_SYNC_WHEN exists, and those of the spill
 *   file, `authkit.db-spill`, and its log while the file named by
 *   AUTHKIT_TEST_FAIL_SPILL_SYNC_WHEN exists;
 * - pwrite, pwrite64 and write to any of the database's files (`authkit.db`,
 *   its log, the spill file `authkit.db-spill` and its log; not the `-shm`
 *   index, which SQLite maps into memory) fail with ENOSPC, as on a full disk,
 *   while the file named by AUTHKIT_TEST_DISK_FULL_WHEN exists.
 * Every other call goes to libc. Built by the test with the C compiler the
 * build already needs (SQLite).
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/types.h>
#include <unistd.h>

#include "fd_path.h"

#define SYNC "AUTHKIT_TEST_FAIL_SYNC_WHEN"
#define SPILL_SYNC "AUTHKIT_TEST_FAIL_SPILL_SYNC_WHEN"
#define FULL "AUTHKIT_TEST_DISK_FULL_WHEN"

/* Whether the file named by `variable` exists. */
static int marked(const char *variable) {
    const char *marker = getenv(variable);
    return marker != NULL && access(marker, F_OK) == 0;
}

/* Whether a call on `fd` fails now: for a sync (`variable` SYNC), `fd` is the
 * log while SYNC's marker exists, or the spill file or its log while
 * SPILL_SYNC's does; for a write, `variable`'s marker exists and `fd` is any
 * of the database's files. */
static int failing(int fd, const char *variable) {
    int sync = strcmp(variable, SYNC) == 0;
    int log = sync && marked(SYNC), spill = sync && marked(SPILL_SYNC);
    if (sync ? !log && !spill : !marked(variable)) {
        return 0;
    }
    char path[4096];
    if (path_of(fd, path, sizeof path) < 0) {
        return 0;
    }
    if (sync) {
        return (log && ends_with(path, "/authkit.db-wal")) ||
               (spill && (ends_with(path, "/authkit.db-spill") || ends_with(path, "/authkit.db-spill-wal")));
    }
    const char *base = strrchr(path, '/');
    return base != NULL && strncmp(base, "/authkit.db", 11) == 0 && !ends_with(path, "-shm") &&
           !ends_with(path, " (deleted)");
}

/* Defines `name` to fail with `error` while [`failing`], and to call libc's
 * `name` otherwise. */
#define INTERPOSE(ret, name, params, args, variable, error)          \
    ret name params {                                                \
        static ret(*real) params;                                    \
        if (real == NULL) {                                          \
            real = (ret(*) params)dlsym(RTLD_NEXT, #name);           \
        }                                                            \
        if (failing(fd, variable)) {                                 \
            errno = error;                                           \
            return -1;                                               \
        }                                                            \
        return real args;                                            \
    }

INTERPOSE(int, fsync, (int fd), (fd), SYNC, EIO)
INTERPOSE(int, fdatasync, (int fd), (fd), SYNC, EIO)
INTERPOSE(ssize_t, write, (int fd, const void *buf, size_t count), (fd, buf, count), FULL, ENOSPC)
INTERPOSE(ssize_t, pwrite, (int fd, const void *buf, size_t count, off_t offset), (fd, buf, count, offset), FULL, ENOSPC)
INTERPOSE(ssize_t, pwrite64, (int fd, const void *buf, size_t count, off_t offset), (fd, buf, count, offset), FULL,
          ENOSPC)
