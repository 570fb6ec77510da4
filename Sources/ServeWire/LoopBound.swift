import NIOCore

extension NIOLoopBound {
    /// Runs `body` with the value on its event loop: at once when already there (handlers are),
    /// else after a hop. How a connection's writers and readers, on other threads, reach it.
    func perform<T: Sendable>(_ body: @escaping @Sendable (Value) throws -> T) async throws -> T {
        if self.eventLoop.inEventLoop { return try body(self.value) }
        let bound = self
        return try await self.eventLoop.submit { try body(bound.value) }.get()
    }

    /// Runs a write with the value on its event loop, then waits for the room it found lacking
    /// (the future it returns, if any: a full socket or send queue). How a writer on any thread
    /// is slowed to its peer's pace.
    func performWrite(_ write: @escaping @Sendable (Value) throws -> EventLoopFuture<Void>?) async throws {
        if let roomAgain = try await self.perform(write) { try await roomAgain.get() }
    }

    /// Runs `body` with the value on its event loop, without waiting for it.
    func performLater(_ body: @escaping @Sendable (Value) -> Void) {
        if self.eventLoop.inEventLoop { return body(self.value) }
        let bound = self
        self.eventLoop.execute { body(bound.value) }
    }
}
