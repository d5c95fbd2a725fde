/*
 * A failing disk under the database's log, for the lifecycle tests: loaded
 * into authkit-host with LD_PRELOAD, it makes calls on a file named
 * `authkit.db-wal` fail:
 * - fsync and fdatasync with EIO while the file named by
 *   AUTHKIT_TEST_FAIL_SYNC_WHEN exists;
 * - pwrite, pwrite64 and write with ENOSPC (a full disk) while the file named
 *   by AUTHKIT_TEST_DISK_FULL_WHEN exists.
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

static int failing(int fd, const char *variable) {
    const char *marker = getenv(variable);
    if (marker == NULL || access(marker, F_OK) != 0) {
        return 0;
    }
    char path[4096];
    return path_of(fd, path, sizeof path) >= 0 && ends_with(path, "/authkit.db-wal");
}

#define SYNC "AUTHKIT_TEST_FAIL_SYNC_WHEN"
#define FULL "AUTHKIT_TEST_DISK_FULL_WHEN"

/* Defines `name` to fail with `error` on the log while `variable`'s marker
 * exists, and to call libc's `name` otherwise. */
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
