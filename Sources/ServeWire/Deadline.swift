import NIOConcurrencyHelpers

/// The deadline of `withDeadline` passed before its work finished.
public struct DeadlineExceeded: Error, Sendable, CustomStringConvertible {
    public var description: String { "the deadline passed" }
}

/// Runs `body`, cancelling it and throwing `DeadlineExceeded` once `deadline` has passed (nil:
/// no deadline). The one timeout race of ServeWire's users: the work runs in a child task beside
/// a timer, and whichever ends first cancels the other.
public func withDeadline<T: Sendable>(
    _ deadline: ContinuousClock.Instant?,
    _ body: @escaping @Sendable () async throws -> T
) async throws -> T {
    guard let deadline else { return try await body() }
    return try await withThrowingTaskGroup(of: T.self) { group in
        group.addTask { try await body() }
        group.addTask {
            try await Task.sleep(until: deadline, clock: .continuous)
            throw DeadlineExceeded()
        }
        defer { group.cancelAll() }
        return try await group.next()!
    }
}

/// `withDeadline` at `timeout` from now.
public func withDeadline<T: Sendable>(after timeout: Duration?, _ body: @escaping @Sendable () async throws -> T) async throws -> T {
    try await withDeadline(timeout.map { ContinuousClock.now + $0 }, body)
}

/// `withDeadline` for work that may ignore cancellation (user code: a health check, a
/// `reconfigure`): past `timeout` the caller gets `DeadlineExceeded` at once, and the work,
/// cancelled, is left to end on its own (its late result is dropped).
public func withDeadline<T: Sendable>(abandoningAfter timeout: Duration, _ body: @escaping @Sendable () async throws -> T) async throws -> T {
    let box = NIOLockedValueBox<(continuation: CheckedContinuation<T, any Error>?, tasks: [Task<Void, Never>])>((nil, []))
    let finish: @Sendable (Result<T, any Error>) -> Void = { result in
        let (continuation, tasks) = box.withLockedValue { state in
            defer { state = (nil, []) }
            return state
        }
        for task in tasks { task.cancel() }
        continuation?.resume(with: result)
    }
    return try await withCheckedThrowingContinuation { continuation in
        box.withLockedValue { $0.continuation = continuation }
        let timer = Task {
            try? await Task.sleep(for: timeout)
            if !Task.isCancelled { finish(.failure(DeadlineExceeded())) }
        }
        let work = Task {
            do { finish(.success(try await body())) } catch { finish(.failure(error)) }
        }
        box.withLockedValue { state in
            if state.continuation != nil {
                state.tasks = [timer, work]
            } else {
                timer.cancel()
                work.cancel()
            }
        }
    }
}

extension Duration {
    /// The duration in seconds, as the `ServeCore` machines take time.
    public var seconds: Double {
        Double(self.components.seconds) + Double(self.components.attoseconds) / 1e18
    }
}

/// The one monotonic time origin of a process: `now` is what the `ServeCore` machines get as
/// their `now` (seconds since this process first asked), and `seconds(_:)` places an instant
/// on the same scale.
public enum MonotonicTime {
    private static let origin = ContinuousClock.now

    public static var now: Double { Self.seconds(.now) }

    public static func seconds(_ instant: ContinuousClock.Instant) -> Double {
        (instant - Self.origin).seconds
    }
}
