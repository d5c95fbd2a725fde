/* What both shims need: the path of the file open as a descriptor. */
#ifndef AUTHKIT_FAULT_FD_PATH_H
#define AUTHKIT_FAULT_FD_PATH_H

#include <stdio.h>
#include <string.h>
#include <unistd.h>

/* Writes the path of the file open as `fd` into `path` (as /proc shows it:
 * a deleted file's ends with " (deleted)"); returns its length, or -1. */
static ssize_t path_of(int fd, char *path, size_t size) {
    char link[64];
    snprintf(link, sizeof link, "/proc/self/fd/%d", fd);
    ssize_t n = readlink(link, path, size - 1);
    if (n >= 0) {
        path[n] = '\0';
    }
    return n;
}

/* Whether `s` ends with `end`. */
static int ends_with(const char *s, const char *end) {
    size_t n = strlen(s), m = strlen(end);
    return n >= m && strcmp(s + n - m, end) == 0;
}

#endif
