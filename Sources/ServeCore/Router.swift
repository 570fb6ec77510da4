/// How loaded one replica looks to a router.
public struct ReplicaLoadView: Sendable, Hashable {
    public var id: String
    /// Requests this router has sent it that have not finished: exact, and current.
    public var inFlight: Int
    /// The replica's last reported queue length (running plus queued, from every router):
    /// complete, but as old as the last heartbeat.
    public var reported: Int
    /// The deployment's `max_ongoing_requests`.
    public var maxOngoing: Int

    public init(id: String, inFlight: Int = 0, reported: Int = 0, maxOngoing: Int) {
        self.id = id
        self.inFlight = inFlight
        self.reported = reported
        self.maxOngoing = maxOngoing
    }

    /// The load routing compares: the larger of what this router knows it sent and what the
    /// replica last said, since each alone can undercount.
    public var load: Int {
        max(self.inFlight, self.reported)
    }

    /// Whether this router may send it another request: below `max_ongoing_requests` by its own
    /// count (the replica enforces the limit itself too, PEERS.md §2 "Back-pressure").
    public var hasCapacity: Bool {
        self.inFlight < self.maxOngoing
    }
}

/// Ray Serve's default request router (PEERS.md §2, `PowerOfTwoChoicesRequestRouter`): sample two
/// replicas, send to the less loaded. Nearly as good as asking every replica, at constant cost,
/// and random enough that even sequential requests spread over all replicas (DESIGN.md
/// "Ingress").
public enum PowerOfTwoChoices {
    /// Draws two distinct replicas at random and picks the one with the lower load (load =
    /// max(inFlight, reported)), skipping replicas whose inFlight has reached maxOngoing; with
    /// one eligible replica, that one; none eligible → nil (the caller queues the request or
    /// answers 503). Ties go to the first draw. Returns the index into `replicas`.
    public static func choose<G: RandomNumberGenerator>(_ replicas: [ReplicaLoadView], using generator: inout G) -> Int? {
        let eligible = replicas.indices.filter { replicas[$0].hasCapacity }
        switch eligible.count {
        case 0:
            return nil
        case 1:
            return eligible[0]
        default:
            let firstDraw = Int.random(in: 0..<eligible.count, using: &generator)
            var secondDraw = Int.random(in: 0..<(eligible.count - 1), using: &generator)
            if secondDraw >= firstDraw { secondDraw += 1 }
            let first = eligible[firstDraw]
            let second = eligible[secondDraw]
            return replicas[second].load < replicas[first].load ? second : first
        }
    }
}
