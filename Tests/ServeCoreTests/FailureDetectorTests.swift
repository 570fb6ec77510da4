import Testing

@testable import ServeCore

/// The failure detector fed events on a fake clock (seconds as plain numbers): no sockets, no
/// sleeping.
@Suite("Failure detection")
struct FailureDetectorTests {
    let config = FailureDetector.Configuration(heartbeatTimeout: 2)

    @Test("a worker is pinged at least three times within its head timeout and no more often; every round when it did not say")
    func pingEvery() {
        let round = 0.5
        for headTimeout in [1.5, 2, 5, 7.2, 30] {
            let every = FailureDetector.pingEvery(headTimeout: headTimeout, round: round)
            #expect(Double(every) * round * 3 <= headTimeout, "timeout \(headTimeout): every \(every) rounds")
            #expect(Double(every + 1) * round * 3 > headTimeout, "timeout \(headTimeout): could ping less often than every \(every) rounds")
        }
        #expect(FailureDetector.pingEvery(headTimeout: 5, round: round) == 3)
        // A worker with a timeout under three rounds (--head-timeout-s 1) is pinged every round.
        #expect(FailureDetector.pingEvery(headTimeout: 1, round: round) == 1)
        #expect(FailureDetector.pingEvery(headTimeout: 0, round: round) == 1)
        #expect(FailureDetector.pingEvery(headTimeout: .infinity, round: round) == 1)
    }

    @Test("heartbeats that change nothing reach the controller once per interval; changes, waiting requests and the first quiet one after them always do")
    func quietHeartbeats() {
        var filter = QuietHeartbeats(heartbeatTimeout: 5)
        #expect(filter.interval == 1)
        // (changes, waiting, now) → passed on
        let steps: [(Bool, Bool, Double, Bool, String)] = [
            (true, false, 0, true, "a change"),
            (false, false, 0.5, false, "quiet, within the interval"),
            (false, false, 1.0, true, "a quiet one each interval shows the node alive"),
            (false, false, 1.5, false, "quiet, within the interval"),
            (true, false, 1.7, true, "a change always goes"),
            (false, true, 1.8, true, "waiting requests always go"),
            (false, false, 1.9, true, "the first without waiting requests clears them"),
            (false, false, 2.4, false, "quiet, within the interval"),
        ]
        for (changes, waiting, now, expected, why) in steps {
            let passed = filter.pass(changes: changes, waiting: waiting, now: now)
            #expect(passed == expected, "at \(now): \(why)")
        }
        // A short timeout: every 0.5 s heartbeat goes, so the detector is never more than one late.
        var strict = QuietHeartbeats(heartbeatTimeout: 1)
        #expect(strict.interval == 0.2)
        let first = strict.pass(changes: false, waiting: false, now: 0)
        let second = strict.pass(changes: false, waiting: false, now: 0.5)
        #expect(first && second)
        // Never more than an interval and a heartbeat behind: the controller hears from a live
        // node well within the heartbeat timeout.
        var quiet = QuietHeartbeats(heartbeatTimeout: 5)
        var last: Double?
        var t = 0.0
        while t < 30 {
            if quiet.pass(changes: false, waiting: false, now: t) {
                if let last { #expect(t - last <= quiet.interval + 0.5) }
                last = t
            }
            t += 0.5
        }
        #expect(last != nil)
    }

    @Test("a node heard from within the timeout stays ALIVE; silent for the timeout it is DEAD, once")
    func timeout() {
        var detector = FailureDetector(configuration: self.config)
        detector.registered("a", connection: 1, now: 0)
        detector.registered("b", connection: 2, now: 0)
        var t = 0.0
        while t < 10 {
            t += 0.5
            #expect(detector.heard(from: "a", connection: 1, now: t).isEmpty)
            let directives = detector.tick(now: t)
            if t < 2 {
                #expect(directives.isEmpty)
            } else if t == 2 {
                #expect(
                    directives == [
                        .declareDead(nodeID: "b", reason: "no heartbeat for 2.0 s (heartbeat timeout 2.0 s)")
                    ]
                )
            } else {
                #expect(directives.isEmpty, "DEAD is declared once")
            }
        }
        #expect(detector.state(of: "a") == .alive)
        #expect(detector.state(of: "b") == .dead)
    }

    @Test("the head's own drain (a node about to be terminated) is DRAINING once, as a worker's is; a DEAD or unknown node is not drained")
    func headDrains() {
        var detector = FailureDetector(configuration: self.config)
        detector.registered("a", connection: 1, now: 0)
        #expect(detector.drain("a") == [.markDraining(nodeID: "a")])
        #expect(detector.state(of: "a") == .draining)
        #expect(detector.drain("a").isEmpty)
        #expect(detector.heard(from: "a", connection: 1, draining: true, now: 1).isEmpty, "its worker saying so changes nothing more")
        _ = detector.streamEnded("a", connection: 1, now: 2)
        #expect(detector.drain("a").isEmpty)
        #expect(detector.state(of: "a") == .dead)
        #expect(detector.drain("nobody").isEmpty)
    }

    @Test("the deadline is the oldest live node's last contact plus the timeout")
    func nextDeadline() {
        var detector = FailureDetector(configuration: self.config)
        #expect(detector.nextDeadline == nil)
        detector.registered("a", connection: 1, now: 1)
        detector.registered("b", connection: 2, now: 3)
        #expect(detector.nextDeadline == 3)
        _ = detector.heard(from: "a", connection: 1, now: 4)
        #expect(detector.nextDeadline == 5)
        #expect(detector.tick(now: 4.99).isEmpty)
        #expect(detector.tick(now: 5).count == 1)
        #expect(detector.nextDeadline == 6)
    }

    @Test("a closed control stream is DEAD at once; a closed older stream changes nothing")
    func streamEnded() {
        var detector = FailureDetector(configuration: self.config)
        detector.registered("a", connection: 1, now: 0)
        detector.registered("a", connection: 2, now: 1)
        #expect(detector.streamEnded("a", connection: 1, now: 1.1).isEmpty, "the old stream was replaced")
        #expect(detector.state(of: "a") == .alive)
        #expect(
            detector.streamEnded("a", connection: 2, now: 1.2) == [
                .declareDead(nodeID: "a", reason: "its control stream closed")
            ]
        )
        #expect(detector.streamEnded("a", connection: 2, now: 1.3).isEmpty)
        #expect(detector.tick(now: 100).isEmpty)
    }

    @Test("messages on a stale stream neither keep a node alive nor revive a DEAD one")
    func staleMessages() {
        var detector = FailureDetector(configuration: self.config)
        detector.registered("a", connection: 1, now: 0)
        #expect(detector.tick(now: 2).count == 1)
        // The partition heals and the old stream delivers what it had buffered.
        #expect(detector.heard(from: "a", connection: 1, draining: true, now: 3).isEmpty)
        #expect(detector.state(of: "a") == .dead)
        // Only a new registration brings it back.
        detector.registered("a", connection: 7, now: 4)
        #expect(detector.state(of: "a") == .alive)
        #expect(detector.heard(from: "a", connection: 1, now: 5.5).isEmpty)
        #expect(detector.tick(now: 6).count == 1, "heartbeats on the stale stream did not count")
    }

    @Test("a heartbeat saying DRAINING marks the node DRAINING once; it can still die")
    func draining() {
        var detector = FailureDetector(configuration: self.config)
        detector.registered("a", connection: 1, now: 0)
        #expect(detector.heard(from: "a", connection: 1, draining: true, now: 0.5) == [.markDraining(nodeID: "a")])
        #expect(detector.heard(from: "a", connection: 1, draining: true, now: 1).isEmpty)
        #expect(detector.heard(from: "a", connection: 1, draining: false, now: 1.5).isEmpty)
        #expect(detector.state(of: "a") == .draining, "DRAINING does not go back to ALIVE on the same stream")
        #expect(
            detector.tick(now: 3.5) == [
                .declareDead(nodeID: "a", reason: "no heartbeat for 2.0 s (heartbeat timeout 2.0 s)")
            ]
        )
    }

    @Test("legal node transitions: ALIVE → DRAINING → DEAD, and DEAD is final")
    func transitions() {
        #expect(NodeState.alive.canMove(to: .draining))
        #expect(NodeState.alive.canMove(to: .dead))
        #expect(NodeState.draining.canMove(to: .dead))
        #expect(!NodeState.draining.canMove(to: .alive))
        #expect(NodeState.dead.legalNextStates.isEmpty)
    }

    @Test("a node's clock going backwards (out-of-order events) never shortens its life")
    func outOfOrder() {
        var detector = FailureDetector(configuration: self.config)
        detector.registered("a", connection: 1, now: 0)
        _ = detector.heard(from: "a", connection: 1, now: 5)
        _ = detector.heard(from: "a", connection: 1, now: 4)
        #expect(detector.tick(now: 6.9).isEmpty)
        #expect(detector.tick(now: 7).count == 1)
    }
}

@Suite("Replica adoption when a node registers")
struct ReplicaAdoptionTests {
    @Test("a known replica is kept whatever it is; an unknown one only when it is current, running and needed")
    func decisions() {
        func decide(
            deployed: Bool = true,
            currentSpec: Bool = true,
            running: Bool = true,
            known: Bool = false,
            live: Int,
            target: Int
        ) -> ReplicaAdoption.Decision {
            ReplicaAdoption.decide(
                deployed: deployed,
                currentSpec: currentSpec,
                running: running,
                known: known,
                liveCurrent: live,
                target: target
            )
        }
        #expect(decide(known: true, live: 5, target: 1) == .adopt)
        #expect(decide(live: 0, target: 2) == .adopt, "a head that lost track (restart) adopts what it needs")
        #expect(decide(live: 1, target: 2) == .adopt)
        guard case .stop(let reason) = decide(live: 2, target: 2) else {
            Issue.record("a node declared DEAD and replaced must not add replicas beyond the target")
            return
        }
        #expect(reason.contains("declared dead"))
        #expect(decide(deployed: false, live: 0, target: 0) == .stop(reason: "its deployment is no longer deployed"))
        #expect(
            decide(currentSpec: false, live: 0, target: 2)
                == .stop(reason: "it runs an older version of its deployment")
        )
        #expect(
            decide(running: false, live: 0, target: 2) == .stop(reason: "it was not running when its node registered")
        )
    }
}
