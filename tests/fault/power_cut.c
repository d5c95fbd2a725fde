/*
 * A power cut for the durability tests: loaded into authkit-host with
 * LD_PRELOAD, it journals, before each change to one of the database's files
 * (a file named `authkit.db*`, except the shared-memory index `-shm`, which
 * SQLite rebuilds), what the change overwrites: the bytes and the file's size.
 * A sync of a file marks everything journaled for it before the sync began as
 * durable. After the process is killed, the test undoes what is journaled
 * past that mark, newest first (`authkit_tests::fault::cut_power`): the files
 * are left as a disk that kept only what was synced would leave them.
 *
 * In the directory named by AUTHKIT_TEST_POWER_CUT_DIR, per database file
 * `<name>`:
 * - `<name>.undo`: records of (offset, size before, length) as three native
 *   64-bit integers, then `length` bytes that were at `offset`;
 * - `<name>.synced`: the length of `<name>.undo` that is durable, one native
 *   64-bit integer.
 * A record cut short by the kill is one whose change never happened (the
 * change follows the record).
 *
 * Every other call goes to libc. Built by the test with the C compiler the
 * build already needs (SQLite).
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <unistd.h>

#include "fd_path.h"

static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;

static ssize_t (*real_pwrite_of(void))(int, const void *, size_t, off_t) {
    static ssize_t (*real)(int, const void *, size_t, off_t);
    if (real == NULL) {
        real = (ssize_t(*)(int, const void *, size_t, off_t))dlsym(RTLD_NEXT, "pwrite");
    }
    return real;
}

/* Writes the journal's path (without suffix) of the file open as `fd` into
 * `name`; 0 if it is not one of the database's files. */
static int journal_of(int fd, char *name, size_t size) {
    const char *dir = getenv("AUTHKIT_TEST_POWER_CUT_DIR");
    struct stat st;
    if (dir == NULL || fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
        return 0;
    }
    char path[4096];
    if (path_of(fd, path, sizeof path) < 0) {
        return 0;
    }
    const char *base = strrchr(path, '/');
    base = base == NULL ? path : base + 1;
    if (strncmp(path, dir, strlen(dir)) == 0 || strncmp(base, "authkit.db", 10) != 0 || ends_with(base, "-shm") ||
        ends_with(base, " (deleted)")) {
        return 0;
    }
    snprintf(name, size, "%s/%s", dir, base);
    return 1;
}

static void write_all(int fd, const void *data, size_t length) {
    const char *p = data;
    while (length > 0) {
        ssize_t n = real_pwrite_of()(fd, p, length, lseek(fd, 0, SEEK_END));
        if (n <= 0) {
            abort(); /* a journal that cannot be written would make the test lie */
        }
        p += n;
        length -= (size_t)n;
    }
}

/* Journals, in `name`'s journal, what a change to [offset, end) of the file
 * open as `fd` will overwrite, and its size now. Called with `lock` held. */
static void remember(int fd, const char *name, off_t offset, off_t end) {
    char journal[4300];
    struct stat st;
    if (fstat(fd, &st) != 0) {
        abort();
    }
    off_t kept_end = end < st.st_size ? end : st.st_size;
    uint64_t length = offset < kept_end ? (uint64_t)(kept_end - offset) : 0;
    uint64_t header[3] = {(uint64_t)offset, (uint64_t)st.st_size, length};
    char *old = malloc(length + 1);
    if (old == NULL || pread(fd, old, length, offset) != (ssize_t)length) {
        abort();
    }
    snprintf(journal, sizeof journal, "%s.undo", name);
    int out = open(journal, O_WRONLY | O_CREAT | O_CLOEXEC, 0600);
    if (out < 0) {
        abort();
    }
    write_all(out, header, sizeof header);
    write_all(out, old, length);
    close(out);
    free(old);
}

/* The journal's length for the file open as `fd` now (-1 if not journaled). */
static int64_t journaled(int fd, char *name, size_t size) {
    if (!journal_of(fd, name, size)) {
        return -1;
    }
    char journal[4300];
    snprintf(journal, sizeof journal, "%s.undo", name);
    struct stat st;
    return stat(journal, &st) == 0 ? (int64_t)st.st_size : 0;
}

/* Marks the first `length` bytes of `name`'s journal as synced. */
static void mark_synced(const char *name, int64_t length) {
    char synced[4300];
    snprintf(synced, sizeof synced, "%s.synced", name);
    int fd = open(synced, O_RDWR | O_CREAT | O_CLOEXEC, 0600);
    if (fd < 0) {
        abort();
    }
    int64_t before = 0;
    if (pread(fd, &before, sizeof before, 0) != sizeof before) {
        before = 0;
    }
    if (length > before && real_pwrite_of()(fd, &length, sizeof length, 0) != sizeof length) {
        abort();
    }
    close(fd);
}

#define REAL(ret, name, params)                                     \
    static ret(*real) params;                                       \
    if (real == NULL) {                                             \
        real = (ret(*) params)dlsym(RTLD_NEXT, #name);              \
    }

/* A change to the bytes [from, to) of the file: journaled first if the
 * file is one of the database's. */
#define CHANGE(ret, name, params, args, from, to)                   \
    ret name params {                                               \
        REAL(ret, name, params)                                     \
        char journal[4200];                                         \
        if (!journal_of(fd, journal, sizeof journal)) {             \
            return real args;                                       \
        }                                                           \
        pthread_mutex_lock(&lock);                                  \
        remember(fd, journal, from, to);                            \
        ret result = real args;                                     \
        pthread_mutex_unlock(&lock);                                \
        return result;                                              \
    }

/* A sync: what was journaled before it began is durable once it succeeds. */
#define SYNC(name)                                                  \
    int name(int fd) {                                              \
        REAL(int, name, (int))                                      \
        char journal[4200];                                         \
        pthread_mutex_lock(&lock);                                  \
        int64_t before = journaled(fd, journal, sizeof journal);    \
        pthread_mutex_unlock(&lock);                                \
        int result = real(fd);                                      \
        if (result == 0 && before >= 0) {                           \
            pthread_mutex_lock(&lock);                              \
            mark_synced(journal, before);                           \
            pthread_mutex_unlock(&lock);                            \
        }                                                           \
        return result;                                              \
    }

static off_t size_of(int fd) {
    struct stat st;
    return fstat(fd, &st) == 0 ? st.st_size : 0;
}

CHANGE(ssize_t, pwrite, (int fd, const void *buf, size_t count, off_t offset), (fd, buf, count, offset), offset,
       offset + (off_t)count)
CHANGE(ssize_t, pwrite64, (int fd, const void *buf, size_t count, off_t offset), (fd, buf, count, offset), offset,
       offset + (off_t)count)
CHANGE(ssize_t, write, (int fd, const void *buf, size_t count), (fd, buf, count), lseek(fd, 0, SEEK_CUR),
       lseek(fd, 0, SEEK_CUR) + (off_t)count)
/* Shrinking loses the bytes past `length`; growing only the size. */
CHANGE(int, ftruncate, (int fd, off_t length), (fd, length), length, size_of(fd))
CHANGE(int, ftruncate64, (int fd, off_t length), (fd, length), length, size_of(fd))
CHANGE(int, posix_fallocate, (int fd, off_t offset, off_t len), (fd, offset, len), size_of(fd), size_of(fd))
CHANGE(int, fallocate, (int fd, int mode, off_t offset, off_t len), (fd, mode, offset, len), size_of(fd),
       size_of(fd))

SYNC(fsync)
SYNC(fdatasync)
