import NIOCore

/// Runs a task's jobs on one event loop, so a request handler that mostly moves bytes runs
/// beside its connection: calls back into the connection need no thread hop and no future.
///
/// Work that blocks, or that is heavy, belongs in an actor or on another executor: it would
/// stall every connection on this loop.
public final class EventLoopTaskExecutor: TaskExecutor, @unchecked Sendable {
    public let eventLoop: any EventLoop

    public init(_ eventLoop: any EventLoop) {
        self.eventLoop = eventLoop
    }

    public func enqueue(_ job: consuming ExecutorJob) {
        let job = UnownedJob(job)
        self.eventLoop.execute {
            job.runSynchronously(on: self.asUnownedTaskExecutor())
        }
    }
}
