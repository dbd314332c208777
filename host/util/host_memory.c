/* This machine's usable memory (host_memory.h): sysconf's physical
 * memory, capped by the control groups /proc/self/cgroup names. */
#define _POSIX_C_SOURCE 200809L
#include "util/host_memory.h"

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "util/internal.h"

/* The limit a cgroup file holds: its number, or SIZE_MAX for none
 * ("max", a file that is missing or unreadable). */
static size_t read_limit(const char *path) {
    FILE *f = fopen(path, "r");
    if (!f)
        return SIZE_MAX;
    char text[64] = "";
    int ok = fgets(text, sizeof text, f) != NULL;
    fclose(f);
    char *end = NULL;
    unsigned long long v = ok ? strtoull(text, &end, 10) : 0;
    return ok && end != text && (*end == '\n' || *end == '\0') ? (size_t)v : SIZE_MAX;
}

/* The smallest limit in file under folder/group and under each group above
 * it, up to folder itself (a namespaced mount shows a process its own group
 * as the root, while /proc/self/cgroup may name it by its full path). */
static size_t group_limit(const char *folder, const char *group, const char *file) {
    char path[4096];
    size_t limit = SIZE_MAX, n = strlen(group);
    while (n > 0 && group[n - 1] == '/')
        n--;
    for (;;) {
        int len = snprintf(path, sizeof path, "%s%.*s/%s", folder, (int)n, group, file);
        size_t v = len > 0 && (size_t)len < sizeof path ? read_limit(path) : SIZE_MAX;
        limit = v < limit ? v : limit;
        if (n == 0)
            return limit;
        while (n > 0 && group[n - 1] != '/')
            n--;
        while (n > 0 && group[n - 1] == '/')
            n--;
    }
}

/* 1 when the comma-separated controllers name the memory controller. */
static int names_memory(const char *controllers, size_t n) {
    for (size_t i = 0; i < n;) {
        size_t j = i;
        while (j < n && controllers[j] != ',')
            j++;
        if (j - i == 6 && strncmp(controllers + i, "memory", 6) == 0)
            return 1;
        i = j + 1;
    }
    return 0;
}

size_t pb_host_memory_limit(const char *self_cgroup, const char *cgroup_root, size_t physical) {
    FILE *f = fopen(self_cgroup, "r");
    if (!f)
        return physical;
    size_t limit = physical;
    char line[4096], folder[4096];
    while (fgets(line, sizeof line, f)) {
        line[strcspn(line, "\n")] = '\0';
        char *a = strchr(line, ':'), *b = a ? strchr(a + 1, ':') : NULL;
        if (!b)
            continue;
        size_t v = SIZE_MAX;
        if (b == a + 1 && a - line == 1 && line[0] == '0') { /* v2: "0::/group" */
            v = group_limit(cgroup_root, b + 1, "memory.max");
        } else if (names_memory(a + 1, (size_t)(b - a - 1))) { /* v1: "N:memory,...:/group" */
            snprintf(folder, sizeof folder, "%s/memory", cgroup_root);
            v = group_limit(folder, b + 1, "memory.limit_in_bytes");
        }
        limit = v < limit ? v : limit;
    }
    fclose(f);
    return limit;
}

pb_status pb_host_memory(size_t *bytes) {
    long pages = sysconf(_SC_PHYS_PAGES), page = sysconf(_SC_PAGESIZE);
    if (pages <= 0 || page <= 0)
        return pb_fail(PB_ERR_ARG, "cannot read this machine's memory");
    *bytes = pb_host_memory_limit("/proc/self/cgroup", "/sys/fs/cgroup", (size_t)pages * (size_t)page);
    return PB_OK;
}
