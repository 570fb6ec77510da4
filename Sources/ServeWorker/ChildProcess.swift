import CServeSpawn
import Foundation
import NIOConcurrencyHelpers

#if canImport(Glibc)
import Glibc
#endif

/// Starts a child process the way a replica needs it: signals unblocked and at their defaults
/// (the worker's threads block most signals, and a spawn passes that mask on, so a child would
/// ignore SIGTERM), in its own process group (so stopping it reaches anything it started), with
/// its output appended to a log file and its working directory set.
///
/// It holds none of this process's descriptors: every descriptor above stderr is close-on-exec in
/// the child whatever flags it was opened with (`serve_spawn`), so a child that outlives its node
/// does not keep the node's listening sockets (the head's cluster, ingress and admin ports, a
/// worker's data plane) or its connections. With `dieWithParent` it also dies with its node: a
/// node killed with SIGKILL takes its replicas along (PR_SET_PDEATHSIG) instead of leaving them
/// to serve on, unknown to any head.
package final class ChildProcess: Sendable {
    package let pid: pid_t

    package struct SpawnError: Error, CustomStringConvertible {
        package var description: String
    }

    /// `errorPath`: where stderr goes when it should not join stdout in `logPath` (a command
    /// whose stdout is an answer to parse). `dieWithParent`: SIGKILL the child when this process
    /// ends (replicas; not the node provider's workers, which outlive a head by design).
    package init(
        argv: [String], environment: [String: String], workingDirectory: String?, logPath: String,
        errorPath: String? = nil, dieWithParent: Bool = false
    ) throws {
        // env(1) resolves the command through PATH like a shell would (`python3 model.py`) and
        // changes directory first (GNU env's -C).
        var command = ["/usr/bin/env"]
        if let workingDirectory, !workingDirectory.isEmpty { command += ["-C", workingDirectory] }
        command += argv
        let environmentLines = environment.map { "\($0.key)=\($0.value)" }
        let arguments = command
        let result = Spawner.shared.run {
            let cArguments = arguments.map { strdup($0) } + [nil]
            let cEnvironment = environmentLines.map { strdup($0) } + [nil]
            defer {
                for pointer in cArguments { free(pointer) }
                for pointer in cEnvironment { free(pointer) }
            }
            var pid: pid_t = 0
            let error = cArguments.withUnsafeBufferPointer { argv in
                cEnvironment.withUnsafeBufferPointer { envp in
                    serve_spawn(
                        "/usr/bin/env", argv.baseAddress, envp.baseAddress, logPath, errorPath,
                        dieWithParent ? 1 : 0, &pid)
                }
            }
            return (error, pid)
        }
        guard result.0 == 0 else {
            throw SpawnError(description: "could not start \(argv.joined(separator: " ")): \(String(cString: strerror(result.0)))")
        }
        self.pid = result.1
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

/// The thread every child is forked from. PR_SET_PDEATHSIG fires when the *thread* that forked
/// the child ends, not the process (prctl(2)), and the threads of Swift's concurrency pool come
/// and go: so children are forked here, on one thread that lives as long as the process.
private final class Spawner: Sendable {
    static let shared = Spawner()


    private let jobs = ConditionLock<Int>(value: 0)
    private let queue = NIOLockedValueBox<[@Sendable () -> Void]>([])

    private init() {
        let thread = Thread { [self] in
            while true {
                self.jobs.lock(whenValue: 1)
                let next = self.queue.withLockedValue { queue in queue.isEmpty ? nil : queue.removeFirst() }
                let left = self.queue.withLockedValue { $0.count }
                self.jobs.unlock(withValue: left > 0 ? 1 : 0)
                next?()
            }
        }
        thread.name = "serve-spawner"
        thread.start()
    }

    /// Runs `work` on the spawner thread and waits for its result.
    func run<T: Sendable>(_ work: @escaping @Sendable () -> T) -> T {
        let result = NIOLockedValueBox<T?>(nil)
        let done = ConditionLock<Int>(value: 0)
        self.jobs.lock()
        self.queue.withLockedValue {
            $0.append {
                let value = work()
                result.withLockedValue { $0 = value }
                done.lock()
                done.unlock(withValue: 1)
            }
        }
        self.jobs.unlock(withValue: 1)
        done.lock(whenValue: 1)
        done.unlock()
        return result.withLockedValue { $0! }
    }
}
