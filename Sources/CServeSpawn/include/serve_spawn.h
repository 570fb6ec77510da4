#ifndef SERVE_SPAWN_H
#define SERVE_SPAWN_H

#include <sys/types.h>

/// Starts `path` with `argv` and `envp` as a replica's child: in a process group of its own,
/// every signal unblocked and at its default, stdin from /dev/null, stdout appended to
/// `stdout_path` and stderr to `stderr_path` (or joined to stdout when NULL), and no other
/// descriptor of this process open in it (every one above 2 is made close-on-exec in the child,
/// whatever flags it was opened with: listening sockets, connections, the state-dir lock).
///
/// With `die_with_parent`, the child gets SIGKILL when the thread that called this ends
/// (PR_SET_PDEATHSIG), so a node killed with SIGKILL takes its replicas with it. Call it from a
/// thread that lives as long as the process.
///
/// Returns 0 and sets `*pid_out`, or an errno value (the child's exec failure included).
int serve_spawn(const char *path, char *const argv[], char *const envp[], const char *stdout_path,
                const char *stderr_path, int die_with_parent, pid_t *pid_out);

#endif
