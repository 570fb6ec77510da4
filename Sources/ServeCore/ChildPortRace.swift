/// What a worker does when a process replica's child does not come up on the port it was given
/// (issue 13, item 8). The worker picks a free port (bind to 0, read it, release it) and the
/// child binds it later: another process can take it in between. Then the child fails to bind
/// and exits, or a stranger answers on "its" port. Either is a race lost, not a broken command:
/// the worker tries again at once on a new port, a bounded number of times, without it counting
/// as a failed start (no backoff, no UNHEALTHY deployment, no restart storm at the head).
public enum ChildPortRace {
    /// Attempts in all, the first included. Losing the race twice in a row is already rare; a
    /// third loss says something else is wrong (a port scanner, a server that forks into another
    /// process group), and the start fails with the reason.
    public static let maxAttempts = 3

    /// How one attempt ended.
    public enum Outcome: Sendable, Hashable {
        /// The child listens on its port (or its health path answered).
        case ready
        /// Another process listens on the port: the child exited, or is about to, unable to bind.
        case portTaken(port: Int)
        /// The child failed for its own reasons (exited with the port free, never listened).
        case failed(String)
    }

    public enum Directive: Sendable, Hashable {
        case ready
        /// Stop this attempt's child (if it still runs) and start another on a new port.
        case retry(reason: String)
        case fail(String)
    }

    /// `attempt` counts from 1.
    public static func decide(attempt: Int, outcome: Outcome) -> Directive {
        switch outcome {
        case .ready:
            return .ready
        case .failed(let reason):
            return .fail(reason)
        case .portTaken(let port):
            let reason = "another process took port \(port) before the replica's process could listen on it"
            guard attempt < Self.maxAttempts else {
                return .fail("\(reason), \(Self.maxAttempts) times in a row")
            }
            return .retry(reason: reason)
        }
    }
}
