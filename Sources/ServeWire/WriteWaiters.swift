import NIOCore

/// The writers waiting for room to write: on HTTP/1.1 for a full socket to drain (NIO's
/// writability), on HTTP/2 for a stream's send queue to. Each writer waits on a future from
/// `wait`; the connection wakes them all once there is room again, or fails them all when the
/// connection or stream is gone. This is how a slow peer slows its writer down.
///
/// Lives on the connection's event loop, like the connection that holds it.
struct WriteWaiters {
    private var promises: [EventLoopPromise<Void>] = []

    var isEmpty: Bool { self.promises.isEmpty }

    /// A future for when there is room again.
    mutating func wait(on eventLoop: any EventLoop) -> EventLoopFuture<Void> {
        let promise = eventLoop.makePromise(of: Void.self)
        self.promises.append(promise)
        return promise.futureResult
    }

    /// Removes every waiting writer, to be woken or failed through what this returns, after this
    /// call has ended: a promise runs its callbacks as it completes, and a writer woken there may
    /// wait again at once, which needs the list free to change (Swift's exclusive access to it).
    mutating func removeAll() -> Removed {
        let removed = Removed(promises: self.promises)
        self.promises.removeAll()
        return removed
    }

    /// Writers taken out of the list, to be woken or failed.
    struct Removed {
        fileprivate let promises: [EventLoopPromise<Void>]

        /// There is room again.
        func succeed() {
            for promise in self.promises { promise.succeed() }
        }

        /// The connection or stream is gone.
        func fail(_ error: any Error) {
            for promise in self.promises { promise.fail(error) }
        }
    }
}
