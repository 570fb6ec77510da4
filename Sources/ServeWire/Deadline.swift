/// The deadline of `withDeadline` passed before its work finished.
public struct DeadlineExceeded: Error, Sendable, CustomStringConvertible {
    public var timeout: Duration
    public var description: String { "no answer within \(self.timeout)" }
}

/// Runs `body`, cancelling it and throwing `DeadlineExceeded` once `timeout` has passed (nil: no
/// deadline). The one timeout race of the project: the work runs in a child task beside a timer,
/// and whichever ends first cancels the other.
public func withDeadline<T: Sendable>(_ timeout: Duration?, _ body: @escaping @Sendable () async throws -> T) async throws -> T {
    guard let timeout else { return try await body() }
    return try await withThrowingTaskGroup(of: T.self) { group in
        group.addTask { try await body() }
        group.addTask {
            try await Task.sleep(for: timeout)
            throw DeadlineExceeded(timeout: timeout)
        }
        defer { group.cancelAll() }
        return try await group.next()!
    }
}
