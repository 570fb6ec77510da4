/// A replica's periodic health check, as Ray Serve drives it (PEERS.md §3): every
/// `health_check_period_s` the replica is asked whether it is healthy; an answer later than
/// `health_check_timeout_s` counts as a failure, and three failures in a row
/// (`REPLICA_HEALTH_CHECK_UNHEALTHY_THRESHOLD`) make it unhealthy, so it is replaced.
///
/// Pure, like `FailureDetector`: the worker's replica shell calls `tick(now:)` on a timer, runs
/// the check when told to, reports the outcome, and replaces the replica on `.unhealthy`.
public struct HealthMonitor: Sendable {
    public struct Configuration: Sendable, Hashable {
        /// Seconds between checks (Ray's default 10).
        public var period: Double
        /// Seconds a check may take before it counts as failed (Ray's default 30).
        public var timeout: Double
        /// Failures in a row that make the replica unhealthy (Ray's 3).
        public var failureThreshold: Int

        public init(period: Double = 10, timeout: Double = 30, failureThreshold: Int = 3) {
            self.period = max(0.05, period)
            self.timeout = max(0.05, timeout)
            self.failureThreshold = max(1, failureThreshold)
        }
    }

    public enum Directive: Sendable, Hashable {
        /// Run check number `number` and report its outcome with that number.
        case runCheck(number: Int)
        /// The replica failed `failureThreshold` checks in a row: stop and replace it.
        case unhealthy(reason: String)
    }

    enum State: Sendable, Hashable {
        case waiting(until: Double)
        case checking(number: Int, deadline: Double)
        case unhealthy

        /// Legal moves: a check starts after the wait, and ends in another wait or, at the
        /// threshold, in UNHEALTHY, which is final (the replica is replaced, never revived).
        func canMove(to next: State) -> Bool {
            switch (self, next) {
            case (.waiting, .checking): true
            case (.checking, .waiting), (.checking, .unhealthy): true
            default: false
            }
        }
    }

    public let configuration: Configuration
    private var state: State
    private var checks = 0
    public private(set) var consecutiveFailures = 0
    public private(set) var lastError = ""

    /// Starts monitoring a replica that has just become RUNNING: the first check is one period
    /// from now (it has just passed its readiness check).
    public init(configuration: Configuration, now: Double) {
        self.configuration = configuration
        self.state = .waiting(until: now + configuration.period)
    }

    public var isUnhealthy: Bool { self.state == .unhealthy }

    /// When the shell should call `tick` next.
    public var nextWake: Double? {
        switch self.state {
        case .waiting(let until): until
        case .checking(_, let deadline): deadline
        case .unhealthy: nil
        }
    }

    public mutating func tick(now: Double) -> [Directive] {
        switch self.state {
        case .waiting(let until) where now >= until:
            self.checks += 1
            self.move(to: .checking(number: self.checks, deadline: now + self.configuration.timeout))
            return [.runCheck(number: self.checks)]
        case .checking(let number, let deadline) where now >= deadline:
            return self.failed(
                number: number,
                "the health check did not answer within \(self.configuration.timeout) s",
                now: now
            )
        default:
            return []
        }
    }

    /// Check `number` passed. A late answer (after its timeout was counted) changes nothing.
    public mutating func succeeded(number: Int, now: Double) -> [Directive] {
        guard case .checking(let current, _) = self.state, current == number else { return [] }
        self.consecutiveFailures = 0
        self.move(to: .waiting(until: now + self.configuration.period))
        return []
    }

    /// Check `number` failed with `error`.
    public mutating func failed(number: Int, _ error: String, now: Double) -> [Directive] {
        guard case .checking(let current, _) = self.state, current == number else { return [] }
        self.consecutiveFailures += 1
        self.lastError = error
        guard self.consecutiveFailures >= self.configuration.failureThreshold else {
            self.move(to: .waiting(until: now + self.configuration.period))
            return []
        }
        self.move(to: .unhealthy)
        return [.unhealthy(reason: "failed \(self.consecutiveFailures) health checks in a row; last: \(error)")]
    }

    private mutating func move(to next: State) {
        precondition(self.state.canMove(to: next), "illegal health-check move \(self.state) -> \(next)")
        self.state = next
    }
}

/// How a deployment's replicas that fail to start are retried (PEERS.md §3: Ray retries
/// constructor failures with exponential backoff, 1, 2, 4… s, then marks the deployment
/// UNHEALTHY). Here: 0.5 s doubling to at most 30 s, and UNHEALTHY with the last error from the
/// third failure in a row until a replica reaches RUNNING (or the spec changes).
public struct StartBackoff: Sendable, Hashable {
    public private(set) var consecutiveFailures = 0
    public private(set) var retryAfter: Double?
    public private(set) var lastError = ""

    public static let unhealthyAfter = 3
    public static let firstDelay = 0.5
    public static let maxDelay = 30.0

    public init() {}

    /// A replica failed before it reached RUNNING.
    public mutating func startFailed(_ error: String, now: Double) {
        self.consecutiveFailures += 1
        self.lastError = error
        let delay = min(Self.maxDelay, Self.firstDelay * Double(1 << min(self.consecutiveFailures - 1, 16)))
        self.retryAfter = now + delay
    }

    /// A replica reached RUNNING (or the spec changed): start afresh.
    public mutating func reset() {
        self = StartBackoff()
    }

    /// Whether a new replica may be started now.
    public func mayStart(now: Double) -> Bool {
        guard let retryAfter = self.retryAfter else { return true }
        return now >= retryAfter
    }

    public var isUnhealthy: Bool { self.consecutiveFailures >= Self.unhealthyAfter }
}
