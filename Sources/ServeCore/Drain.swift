/// A worker's graceful shutdown (SIGTERM), as a pure machine the worker drives.
///
/// On SIGTERM the worker tells the head it is DRAINING (in its next heartbeat). The head starts
/// replacements for its replicas on other nodes first and stops the draining ones as the
/// replacements reach RUNNING (`Reconciler`: draining replicas are replaced like outdated ones),
/// each stop letting the replica's in-flight requests finish. The worker exits when it hosts
/// nothing more, or when the drain deadline passes, or at once if the head cannot be reached
/// (then nobody can start replacements, and waiting only delays the exit); whatever still runs
/// then is stopped gracefully by the worker itself.
public struct NodeDrain: Sendable {
    public enum Directive: Sendable, Hashable {
        /// Stop the replicas still running (each gracefully) and exit.
        case exit(reason: String)
    }

    enum State: Sendable, Hashable {
        case serving
        case draining(deadline: Double)
        case done

        func canMove(to next: State) -> Bool {
            switch (self, next) {
            case (.serving, .draining), (.serving, .done), (.draining, .done): true
            default: false
            }
        }
    }

    /// Seconds a draining worker waits for the head to move its replicas before it stops them
    /// itself. `serve-worker --drain-timeout-s`, default 30.
    public static let defaultTimeout = 30.0

    private var state = State.serving

    public init() {}

    public var isDraining: Bool {
        if case .draining = self.state { return true }
        return false
    }

    public var isDone: Bool { self.state == .done }

    /// SIGTERM arrived. `replicas`: replicas on this worker (starting ones too); `connected`:
    /// whether the control stream to the head is up.
    public mutating func begin(now: Double, timeout: Double, replicas: Int, connected: Bool) -> [Directive] {
        guard self.state == .serving else { return [] }
        self.move(to: .draining(deadline: now + timeout))
        return self.update(replicas: replicas, connected: connected, now: now)
    }

    /// Called as replicas stop and on a timer.
    public mutating func update(replicas: Int, connected: Bool, now: Double) -> [Directive] {
        guard case .draining(let deadline) = self.state else { return [] }
        let reason: String
        if replicas == 0 {
            reason = "drained: no replica left on this node"
        } else if !connected {
            reason = "the head cannot be reached, so nothing can replace the \(replicas) replica(s) here; stopping them"
        } else if now >= deadline {
            reason = "the drain timeout passed with \(replicas) replica(s) still here; stopping them"
        } else {
            return []
        }
        self.move(to: .done)
        return [.exit(reason: reason)]
    }

    private mutating func move(to next: State) {
        precondition(self.state.canMove(to: next), "illegal drain move \(self.state) -> \(next)")
        self.state = next
    }
}
