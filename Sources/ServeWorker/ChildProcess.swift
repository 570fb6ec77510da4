import Foundation

#if canImport(Glibc)
import Glibc
#endif

/// Starts a child process the way a replica needs it: signals unblocked and at their defaults
/// (the worker's threads block most signals, and Foundation's Process passes that mask on, so a
/// child would ignore SIGTERM), in its own process group (so stopping it reaches anything it
/// started), with its output appended to a log file and its working directory set.
package final class ChildProcess: Sendable {
    package let pid: pid_t

    package struct SpawnError: Error, CustomStringConvertible {
        package var description: String
    }

    /// `errorPath`: where stderr goes when it should not join stdout in `logPath` (a command
    /// whose stdout is an answer to parse).
    package init(argv: [String], environment: [String: String], workingDirectory: String?, logPath: String, errorPath: String? = nil) throws {
        var attributes = posix_spawnattr_t()
        posix_spawnattr_init(&attributes)
        defer { posix_spawnattr_destroy(&attributes) }
        var noSignals = sigset_t()
        sigemptyset(&noSignals)
        posix_spawnattr_setsigmask(&attributes, &noSignals)
        var allSignals = sigset_t()
        sigfillset(&allSignals)
        posix_spawnattr_setsigdefault(&attributes, &allSignals)
        posix_spawnattr_setpgroup(&attributes, 0)
        posix_spawnattr_setflags(&attributes, Int16(POSIX_SPAWN_SETSIGMASK | POSIX_SPAWN_SETSIGDEF | POSIX_SPAWN_SETPGROUP))

        var actions = posix_spawn_file_actions_t()
        posix_spawn_file_actions_init(&actions)
        defer { posix_spawn_file_actions_destroy(&actions) }
        posix_spawn_file_actions_addopen(&actions, 0, "/dev/null", O_RDONLY, 0)
        posix_spawn_file_actions_addopen(&actions, 1, logPath, O_WRONLY | O_CREAT | O_APPEND, 0o644)
        if let errorPath {
            posix_spawn_file_actions_addopen(&actions, 2, errorPath, O_WRONLY | O_CREAT | O_APPEND, 0o644)
        } else {
            posix_spawn_file_actions_adddup2(&actions, 1, 2)
        }
        // env(1) resolves the command through PATH like a shell would (`python3 model.py`) and
        // changes directory first (GNU env's -C; glibc's addchdir_np is not visible to Swift).
        var arguments = ["/usr/bin/env"]
        if let workingDirectory, !workingDirectory.isEmpty { arguments += ["-C", workingDirectory] }
        arguments += argv
        let cArguments = arguments.map { strdup($0) } + [nil]
        let cEnvironment = environment.map { strdup("\($0.key)=\($0.value)") } + [nil]
        defer {
            for pointer in cArguments { free(pointer) }
            for pointer in cEnvironment { free(pointer) }
        }
        var pid: pid_t = 0
        let result = posix_spawn(&pid, "/usr/bin/env", &actions, &attributes, cArguments, cEnvironment)
        guard result == 0 else {
            throw SpawnError(description: "could not start \(argv.joined(separator: " ")): \(String(cString: strerror(result)))")
        }
        self.pid = pid
    }

    /// Waits for the child to exit (on a thread of its own: waitpid blocks) and reports its
    /// status: the exit code, or 128 + the signal that ended it, as shells do.
    package func onExit(_ handler: @escaping @Sendable (Int32) -> Void) {
        let pid = self.pid
        let thread = Thread {
            var status: Int32 = 0
            while waitpid(pid, &status, 0) == -1 && errno == EINTR {}
            let code = status & 0x7f == 0 ? (status >> 8) & 0xff : 128 + (status & 0x7f)
            handler(code)
        }
        thread.start()
    }

    /// Sends `signal` to the child's whole process group.
    package func signal(_ signal: Int32) {
        kill(-self.pid, signal)
    }
}
