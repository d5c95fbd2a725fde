/*
 * A disk that fails to sync the database's log, for the lifecycle tests:
 * loaded into authkit-host with LD_PRELOAD, it makes fsync and fdatasync of a
 * file named `authkit.db-wal` fail with EIO while the file named by
 * AUTHKIT_TEST_FAIL_SYNC_WHEN exists. Every other call goes to libc.
 * Built by the test with the C compiler the build already needs (SQLite).
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static int failing(int fd) {
    const char *marker = getenv("AUTHKIT_TEST_FAIL_SYNC_WHEN");
    if (marker == NULL || access(marker, F_OK) != 0) {
        return 0;
    }
    char link[64], path[4096];
    snprintf(link, sizeof link, "/proc/self/fd/%d", fd);
    ssize_t n = readlink(link, path, sizeof path - 1);
    if (n < 0) {
        return 0;
    }
    path[n] = '\0';
    const char *log = "/authkit.db-wal";
    size_t len = strlen(log);
    return (size_t)n >= len && strcmp(path + n - len, log) == 0;
}

int fdatasync(int fd) {
    static int (*real)(int);
    if (real == NULL) {
        real = (int (*)(int))dlsym(RTLD_NEXT, "fdatasync");
    }
    if (failing(fd)) {
        errno = EIO;
        return -1;
    }
    return real(fd);
}

int fsync(int fd) {
    static int (*real)(int);
    if (real == NULL) {
        real = (int (*)(int))dlsym(RTLD_NEXT, "fsync");
    }
    if (failing(fd)) {
        errno = EIO;
        return -1;
    }
    return real(fd);
}
