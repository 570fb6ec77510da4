import Testing

@testable import ServeCore

@Suite("Request router")
struct RouterTests {
    private func replicas(_ count: Int, local: Set<Int> = []) -> [RequestRouter.Replica] {
        (0..<count).map { RequestRouter.Replica(id: "r\($0)", isLocal: local.contains($0)) }
    }

    private func id(_ router: RequestRouter, _ acquired: RequestRouter.Acquired) -> String? {
        RequestRouter.chosen(router, acquired)
    }

    @Test("never more than max_ongoing_requests per replica by its own count, then a bounded queue")
    func capacity() {
        var generator = SeededGenerator(seed: 7)
        var router = RequestRouter(replicas: self.replicas(3), maxOngoing: 4, maxQueued: 2)
        var counts: [String: Int] = [:]
        for _ in 0..<12 {
            guard let id = self.id(router, router.acquire(using: &generator)) else {
                Issue.record("no replica although one had room")
                return
            }
            counts[id, default: 0] += 1
        }
        #expect(counts.values.allSatisfy { $0 == 4 })
        // Asked not to queue, a request is told so and the queue stays empty.
        #expect(router.acquire(mayWait: false, using: &generator) == .mustWait)
        #expect(router.waiting == 0)
        #expect(router.acquire(using: &generator) == .wait(0))
        #expect(router.acquire(using: &generator) == .wait(1))
        #expect(router.acquire(using: &generator) == .failed(.queueFull(2)))
        // A freed slot goes to the oldest waiting request.
        #expect(router.release("r1", using: &generator) == [.replica(waiter: 0, index: 1)])
        #expect(router.waiting == 1)
    }

    @Test("sequential requests spread over all replicas")
    func spreads() {
        var generator = SeededGenerator(seed: 42)
        var router = RequestRouter(replicas: self.replicas(5), maxOngoing: 5, maxQueued: -1)
        var picks: [String: Int] = [:]
        for _ in 0..<1000 {
            let id = self.id(router, router.acquire(using: &generator))!
            picks[id, default: 0] += 1
            _ = router.release(id, using: &generator)
        }
        #expect(picks.count == 5 && picks.values.allSatisfy { $0 > 120 }, "picks: \(picks)")
    }

    @Test("of two draws the less loaded wins, by what this router has in flight there")
    func lessLoaded() {
        var generator = SeededGenerator(seed: 3)
        var router = RequestRouter(replicas: self.replicas(2), maxOngoing: 100, maxQueued: -1)
        // Two replicas: both are drawn every time, so slots held (never released) alternate.
        var held: [String: Int] = [:]
        for _ in 0..<9 {
            held[self.id(router, router.acquire(using: &generator))!, default: 0] += 1
            #expect(abs((held["r0"] ?? 0) - (held["r1"] ?? 0)) <= 1, "held: \(held)")
        }
        // r1 frees its slots: the next requests go to it until it is as loaded as r0.
        for _ in 0..<(held["r1"] ?? 0) { _ = router.release("r1", using: &generator) }
        for _ in 0..<(held["r0"] ?? 0) {
            #expect(self.id(router, router.acquire(using: &generator)) == "r1")
        }
    }

    @Test("the router's own node first; other nodes only when its replicas are full")
    func localFirst() {
        var generator = SeededGenerator(seed: 9)
        var router = RequestRouter(replicas: self.replicas(4, local: [1, 3]), maxOngoing: 2, maxQueued: -1)
        var first: [String] = []
        for _ in 0..<4 { first.append(self.id(router, router.acquire(using: &generator))!) }
        #expect(first.sorted() == ["r1", "r1", "r3", "r3"])
        let spill = self.id(router, router.acquire(using: &generator))!
        #expect(spill == "r0" || spill == "r2")
    }

    @Test("a woken request never goes to a replica that refused it; one that every replica refused fails")
    func exclusionsWhileWaiting() {
        var generator = SeededGenerator(seed: 5)
        var router = RequestRouter(replicas: self.replicas(2), maxOngoing: 1, maxQueued: -1)
        _ = router.acquire(using: &generator)
        _ = router.acquire(using: &generator)
        // Waiter 0 was refused by r0; waiter 1 by nobody.
        #expect(router.acquire(excluding: ["r0"], using: &generator) == .wait(0))
        #expect(router.acquire(using: &generator) == .wait(1))
        // r0 frees: waiter 0 must not take it, waiter 1 does.
        #expect(router.release("r0", using: &generator) == [.replica(waiter: 1, index: 0)])
        #expect(router.release("r1", using: &generator) == [.replica(waiter: 0, index: 1)])
        #expect(router.acquire(excluding: ["r0", "r1"], using: &generator) == .failed(.exhausted))
    }

    @Test("a table from before the one applied is ignored; a newer one drops stopped replicas' counts")
    func staleTables() {
        var generator = SeededGenerator(seed: 1)
        var router = RequestRouter(replicas: self.replicas(2), maxOngoing: 1, maxQueued: -1, version: 5)
        #expect(router.update(replicas: [], maxOngoing: 1, maxQueued: -1, unavailable: nil, version: 4, using: &generator).isEmpty)
        #expect(router.replicas.count == 2)
        _ = router.acquire(using: &generator)
        _ = router.update(replicas: self.replicas(1), maxOngoing: 1, maxQueued: -1, unavailable: nil, version: 6, using: &generator)
        #expect(router.replicas.map(\.id) == ["r0"])
    }

    @Test("cold start: waiting requests wake when replicas appear; an unavailable deployment fails them")
    func coldStart() {
        var generator = SeededGenerator(seed: 2)
        var router = RequestRouter(replicas: [], maxOngoing: 1, maxQueued: -1)
        #expect(router.acquire(using: &generator) == .wait(0))
        #expect(router.acquire(using: &generator) == .wait(1))
        let cancelled = router.cancel(1)
        #expect(cancelled)
        let wakes = router.update(replicas: self.replicas(1), maxOngoing: 1, maxQueued: -1, unavailable: nil, version: 1, using: &generator)
        #expect(wakes == [.replica(waiter: 0, index: 0)])
        #expect(router.acquire(using: &generator) == .wait(2))
        let failed = router.update(replicas: [], maxOngoing: 1, maxQueued: -1, unavailable: "exit 3", version: 2, using: &generator)
        #expect(failed == [.failed(waiter: 2, .unavailable("exit 3"))])
        #expect(router.acquire(using: &generator) == .failed(.unavailable("exit 3")))
    }

    @Test("randomized: slots per replica never exceed the limit, and every waiter is woken or failed once")
    func invariants() {
        var generator = SeededGenerator(seed: 11)
        for round in 0..<50 {
            var router = RequestRouter(replicas: self.replicas(3), maxOngoing: 2, maxQueued: 10)
            var held: [String] = []
            var waiting: Set<Int> = []
            for _ in 0..<200 {
                switch Int.random(in: 0..<3, using: &generator) {
                case 0:
                    switch router.acquire(using: &generator) {
                    case .replica(let index): held.append(router.replicas[index].id)
                    case .wait(let number): waiting.insert(number)
                    case .failed: break
                    case .mustWait: Issue.record("a request that may wait was not queued")
                    }
                case 1 where !held.isEmpty:
                    let id = held.remove(at: Int.random(in: 0..<held.count, using: &generator))
                    for wake in router.release(id, using: &generator) {
                        guard case .replica(let waiter, let index) = wake, waiting.remove(waiter) != nil else {
                            Issue.record("round \(round): a wake for no waiter: \(wake)")
                            return
                        }
                        held.append(router.replicas[index].id)
                    }
                default:
                    if let waiter = waiting.first, router.cancel(waiter) { waiting.remove(waiter) }
                }
                for replica in router.replicas {
                    #expect(router.inFlight(replica.id) <= 2)
                    #expect(router.inFlight(replica.id) == held.filter { $0 == replica.id }.count)
                }
                #expect(router.waiting == waiting.count)
            }
        }
    }
}

@Suite("Retry policy")
struct RetryPolicyTests {
    @Test("refusals are retried elsewhere, up to a cap, then 503 with the reason")
    func refusals() {
        var policy = RetryPolicy(idempotent: false, maxRefusals: 3)
        #expect(policy.decide(.refused(replica: "a", reason: "STOPPING", bodyStarted: false), deployment: "app/D") == .retry(.refused))
        #expect(policy.pauseBeforeRetry == nil)
        #expect(policy.decide(.refused(replica: "b", reason: "unknown", bodyStarted: false), deployment: "app/D") == .retry(.refused))
        guard case .fail(503, let message) = policy.decide(.refused(replica: "c", reason: "STOPPING", bodyStarted: false), deployment: "app/D") else {
            Issue.record("a third refusal was not answered 503")
            return
        }
        #expect(message.contains("3 replicas") && message.contains("STOPPING"))
        #expect(policy.excluded == ["a", "b", "c"])
    }

    @Test("a full replica stays a candidate, tried again after a pause that doubles")
    func fullReplica() {
        var policy = RetryPolicy(idempotent: false, maxRefusals: 4)
        var pauses: [Duration] = []
        for _ in 0..<3 {
            #expect(policy.decide(.refused(replica: "a", reason: "full", bodyStarted: false), deployment: "D") == .retry(.refused))
            pauses.append(policy.pauseBeforeRetry!)
        }
        #expect(pauses == [.milliseconds(1), .milliseconds(2), .milliseconds(4)])
        #expect(policy.excluded.isEmpty)
        guard case .fail(503, _) = policy.decide(.refused(replica: "a", reason: "full", bodyStarted: false), deployment: "D") else {
            Issue.record("refusals were not capped")
            return
        }
    }

    @Test("a refusal after a streamed body started is answered, never sent again")
    func streamedBody() {
        var policy = RetryPolicy(idempotent: true)
        guard case .fail(503, _) = policy.decide(.refused(replica: "a", reason: "full", bodyStarted: true), deployment: "D") else {
            Issue.record("a half-sent body was retried")
            return
        }
    }

    @Test("unreachable replicas are tried up to the limit")
    func unreachable() {
        var policy = RetryPolicy(idempotent: false)
        #expect(policy.decide(.unreachable(replica: "a", reason: "refused"), deployment: "D") == .retry(.unreachable))
        #expect(policy.decide(.unreachable(replica: "b", reason: "refused"), deployment: "D") == .retry(.unreachable))
        guard case .fail(503, _) = policy.decide(.unreachable(replica: "c", reason: "refused"), deployment: "D") else {
            Issue.record("a third unreachable replica was tried again")
            return
        }
    }

    @Test("a failure mid-request is retried once for idempotent requests only")
    func failures() {
        var idempotent = RetryPolicy(idempotent: true)
        #expect(idempotent.decide(.failed(replica: "a", reason: "reset"), deployment: "D") == .retry(.failed))
        #expect(idempotent.decide(.failed(replica: "b", reason: "reset"), deployment: "D") == .fail(status: 502, message: "reset"))
        var other = RetryPolicy(idempotent: false)
        #expect(other.decide(.failed(replica: "a", reason: "reset"), deployment: "D") == .fail(status: 502, message: "reset"))
    }
}

@Suite("Bounded backlogs")
struct BoundedBacklogTests {
    @Test("max_queued_requests -1 still stops at the documented limit")
    func unboundedQueueHasALimit() {
        var generator = SeededGenerator(seed: 4)
        var router = RequestRouter(replicas: [], maxOngoing: 1, maxQueued: -1)
        for number in 0..<RequestRouter.unboundedQueueLimit {
            guard router.acquire(using: &generator) == .wait(number) else {
                Issue.record("request \(number) was not queued")
                return
            }
        }
        #expect(router.acquire(using: &generator) == .failed(.queueFull(RequestRouter.unboundedQueueLimit)))
    }

    @Test("a backlog folds to each subject's latest state, in order")
    func latestPerKey() {
        let reports = [("a", "STARTING"), ("b", "STARTING"), ("a", "RUNNING"), ("c", "STARTING"), ("b", "STOPPED")]
        let folded = reports.latestPerKey(\.0)
        #expect(folded.map(\.0) == ["a", "c", "b"])
        #expect(folded.map(\.1) == ["RUNNING", "STARTING", "STOPPED"])
    }
}

@Suite("Retry policy: nowhere left")
struct RetryExhaustedTests {
    @Test("a failed GET whose retry finds no other replica is answered 502 with the failure, refusals 503")
    func exhaustedAnswers() {
        var failed = RetryPolicy(idempotent: true)
        #expect(failed.decide(.failed(replica: "a", reason: "reset mid-request"), deployment: "D") == .retry(.failed))
        #expect(failed.answer(for: .exhausted, deployment: "D", app: "app") == (502, "reset mid-request"))
        var refused = RetryPolicy(idempotent: false)
        _ = refused.decide(.refused(replica: "a", reason: "STOPPING", bodyStarted: false), deployment: "D")
        #expect(refused.answer(for: .exhausted, deployment: "D", app: "app").status == 503)
    }
}
