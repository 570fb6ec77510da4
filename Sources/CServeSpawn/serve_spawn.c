#define _GNU_SOURCE
#include "serve_spawn.h"

#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdint.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#ifndef CLOSE_RANGE_CLOEXEC
#define CLOSE_RANGE_CLOEXEC (1U << 2)
#endif

/// Between fork and exec only async-signal-safe calls (POSIX.1-2017 §2.4.3): the parent has
/// other threads, whose locks may be held in the child's copy of memory.
static void fail(int report, int error) {
    ssize_t written;
    do {
        written = write(report, &error, sizeof error);
    } while (written < 0 && errno == EINTR);
    _exit(127);
}

static void mark_all_cloexec(void) {
#ifdef SYS_close_range
    if (syscall(SYS_close_range, 3U, ~0U, CLOSE_RANGE_CLOEXEC) == 0) return;
#endif
    // Kernels before 5.11: every descriptor up to the limit, one by one.
    struct rlimit limit;
    long highest = 65536;
    if (getrlimit(RLIMIT_NOFILE, &limit) == 0 && limit.rlim_cur != RLIM_INFINITY) highest = (long)limit.rlim_cur;
    for (long fd = 3; fd < highest; fd++) {
        int flags = fcntl((int)fd, F_GETFD);
        if (flags >= 0) fcntl((int)fd, F_SETFD, flags | FD_CLOEXEC);
    }
}

static int open_onto(const char *path, int flags, int target) {
    int fd = open(path, flags | O_CLOEXEC, 0644);
    if (fd < 0) return -1;
    if (dup2(fd, target) < 0) return -1;  // dup2 clears FD_CLOEXEC on the copy
    close(fd);
    return 0;
}

int serve_spawn(const char *path, char *const argv[], char *const envp[], const char *stdout_path,
                const char *stderr_path, int die_with_parent, pid_t *pid_out) {
    int report[2];
    if (pipe2(report, O_CLOEXEC) != 0) return errno;
    pid_t parent = getpid();
    pid_t pid = fork();
    if (pid < 0) {
        int error = errno;
        close(report[0]);
        close(report[1]);
        return error;
    }
    if (pid == 0) {
        close(report[0]);
        if (die_with_parent) {
            if (prctl(PR_SET_PDEATHSIG, SIGKILL) != 0) fail(report[1], errno);
            // The parent may have died between fork and prctl: then no signal would come.
            if (getppid() != parent) _exit(127);
        }
        if (setpgid(0, 0) != 0) fail(report[1], errno);
        struct sigaction standard = {0};
        standard.sa_handler = SIG_DFL;
        sigemptyset(&standard.sa_mask);
        for (int number = 1; number < NSIG; number++) {
            if (number == SIGKILL || number == SIGSTOP) continue;
            sigaction(number, &standard, NULL);  // fails harmlessly for glibc's reserved ones
        }
        sigset_t none;
        sigemptyset(&none);
        sigprocmask(SIG_SETMASK, &none, NULL);
        if (open_onto("/dev/null", O_RDONLY, 0) != 0) fail(report[1], errno);
        if (open_onto(stdout_path, O_WRONLY | O_CREAT | O_APPEND, 1) != 0) fail(report[1], errno);
        if (stderr_path != NULL) {
            if (open_onto(stderr_path, O_WRONLY | O_CREAT | O_APPEND, 2) != 0) fail(report[1], errno);
        } else if (dup2(1, 2) < 0) {
            fail(report[1], errno);
        }
        mark_all_cloexec();  // the report pipe too: it closes when exec succeeds
        execve(path, argv, envp);
        fail(report[1], errno);
    }
    close(report[1]);
    int error = 0;
    ssize_t got;
    do {
        got = read(report[0], &error, sizeof error);
    } while (got < 0 && errno == EINTR);
    close(report[0]);
    if (got == (ssize_t)sizeof error) {
        // The child could not exec: reap it here, nobody else knows of it.
        int status;
        while (waitpid(pid, &status, 0) < 0 && errno == EINTR) {}
        return error != 0 ? error : ECHILD;
    }
    *pid_out = pid;
    return 0;
}
