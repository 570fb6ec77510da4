/// Whether a request whose try on one replica did not end in an answer goes to another replica,
/// or is answered with an error now. Pure: the proxy feeds it how each try ended and carries out
/// the decision (README "Failure behaviour").
///
/// - A replica that *refused* the request (full, stopping, unknown) never ran it: another may
///   take it, unless part of a streamed body already went to the refusing one. At most
///   `maxRefusals` refusals per request, then 503.
/// - A replica that could not be *reached* never saw it: another is tried, at most
///   `maxUnreachable` unreachable ones, then 503.
/// - A replica that *failed* before answering may have run it: only an idempotent request (GET
///   or HEAD without a body, or a route marked `idempotent` whose body was kept) is sent once
///   more (RFC 9110 §9.2.2); anything else is answered 502.
///
/// Every replica tried is excluded from the next tries of the same request, including while it
/// waits in the router's queue.
public struct RetryPolicy: Sendable, Hashable {
    public enum Outcome: Sendable, Hashable {
        case refused(replica: String, reason: String, bodyStarted: Bool)
        case unreachable(replica: String, reason: String)
        case failed(replica: String, reason: String)
    }

    public enum Decision: Sendable, Hashable {
        /// Try another replica (the failed one is in `excluded`).
        case retry(Reason)
        /// Answer with this status and message.
        case fail(status: Int, message: String)
    }

    /// Why a request went to another replica (a metrics label).
    public enum Reason: String, Sendable, Hashable, CaseIterable {
        case refused, unreachable, failed
    }

    public static let defaultMaxUnreachable = 3
    public static let defaultMaxRefusals = 16

    public let idempotent: Bool
    public let maxUnreachable: Int
    public let maxRefusals: Int
    public private(set) var excluded: Set<String> = []
    public private(set) var refusals = 0
    public private(set) var unreachable = 0
    public private(set) var retriedAfterFailure = false
    private var lastRefusalWasFull = false
    /// Why the last replica that failed mid-request failed (the answer if no other can be tried).
    private var lastFailure: String?

    /// How long to wait before the next try: after a refusal because the replica was full, a
    /// pause doubling from 1 ms (at most 64 ms), so that the retries spread over the time a
    /// slot takes to free; otherwise none.
    public var pauseBeforeRetry: Duration? {
        guard self.lastRefusalWasFull else { return nil }
        return .milliseconds(1 << min(6, self.refusals - 1))
    }

    public init(idempotent: Bool, maxUnreachable: Int = RetryPolicy.defaultMaxUnreachable, maxRefusals: Int = RetryPolicy.defaultMaxRefusals) {
        self.idempotent = idempotent
        self.maxUnreachable = maxUnreachable
        self.maxRefusals = maxRefusals
    }

    public mutating func decide(_ outcome: Outcome, deployment: String) -> Decision {
        switch outcome {
        case .refused(let replica, let reason, let bodyStarted):
            // A full replica may have room a moment later (another proxy's requests, or one
            // finishing just after its answer went out): it stays a candidate, after a short
            // pause. One stopping or gone is excluded.
            self.lastRefusalWasFull = reason == "full"
            if !self.lastRefusalWasFull { self.excluded.insert(replica) }
            self.refusals += 1
            if bodyStarted {
                return .fail(status: 503, message: "replica \(replica) refused the request (\(reason)) while its body streamed; send it again")
            }
            guard self.refusals < self.maxRefusals else {
                return .fail(status: 503, message: "\(self.refusals) replicas of \(deployment) refused the request; last: \(replica) (\(reason))")
            }
            return .retry(.refused)
        case .unreachable(let replica, let reason):
            self.lastRefusalWasFull = false
            self.excluded.insert(replica)
            self.unreachable += 1
            guard self.unreachable < self.maxUnreachable else {
                return .fail(status: 503, message: "no replica of \(deployment) could be reached (\(self.unreachable) tried); last: \(reason)")
            }
            return .retry(.unreachable)
        case .failed(let replica, let reason):
            self.lastRefusalWasFull = false
            guard self.idempotent && !self.retriedAfterFailure else { return .fail(status: 502, message: reason) }
            self.lastFailure = reason
            self.excluded.insert(replica)
            self.retriedAfterFailure = true
            return .retry(.failed)
        }
    }

    /// The answer for a request the router could not place after these tries.
    public func answer(for failure: RequestRouter.Failure, deployment: String, app: String) -> (status: Int, message: String) {
        switch failure {
        case .queueFull(let limit):
            return (503, "\(deployment) has \(limit) requests queued already (max_queued_requests); retry later")
        case .gone:
            return (503, "\(app) was removed")
        case .unavailable(let reason):
            return (503, "\(deployment) has no replica to take the request: \(reason)")
        case .exhausted:
            // The one retry of a request whose replica failed had nowhere else to go: the
            // failure is the answer.
            if let failure = self.lastFailure { return (502, failure) }
            return (503, "every replica of \(deployment) refused the request or could not be reached (\(self.excluded.count) tried)")
        }
    }
}
