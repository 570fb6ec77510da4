import Testing

@testable import ServeCore

extension RequestRouter {
    /// The id of the replica `acquired` names, if it names one.
    static func chosen(_ router: RequestRouter, _ acquired: Acquired) -> String? {
        if case .replica(let index) = acquired { return router.replicas[index].id }
        return nil
    }
}

@Suite("Multiplexed routing and the model LRU")
struct MultiplexTests {
    private func replicas(_ models: [Set<String>], local: Set<Int> = []) -> [RequestRouter.Replica] {
        models.enumerated().map {
            RequestRouter.Replica(id: "r\($0.offset)", isLocal: local.contains($0.offset), models: $0.element)
        }
    }

    @Test("a replica holding the model is preferred, over locality and load")
    func holderFirst() {
        var generator = SeededGenerator(seed: 1)
        var router = RequestRouter(
            replicas: self.replicas([["a"], ["b"], [], ["a", "c"]], local: [1, 2]), maxOngoing: 3, maxQueued: -1)
        var picks: [String: Int] = [:]
        for _ in 0..<6 {
            picks[RequestRouter.chosen(router, router.acquire(model: "a", using: &generator))!, default: 0] += 1
        }
        #expect(picks == ["r0": 3, "r3": 3])
        // Both holders are full: the next goes to a replica with the fewest models (r2, empty),
        // which from now on counts as holding it.
        #expect(RequestRouter.chosen(router, router.acquire(model: "a", using: &generator)) == "r2")
        #expect(router.replicas[2].models == ["a"])
    }

    @Test("no holder: the replicas holding the fewest models, local first among them")
    func fewest() {
        var generator = SeededGenerator(seed: 2)
        let router = RequestRouter(
            replicas: self.replicas([["x", "y"], [], ["z"], []], local: [0, 3]), maxOngoing: 10, maxQueued: -1)
        for _ in 0..<20 {
            var copy = router
            #expect(RequestRouter.chosen(copy, copy.acquire(model: "new", using: &generator)) == "r3")
        }
        // Without a local replica among the fewest, power of two choices among the remote ones.
        var remote = RequestRouter(replicas: self.replicas([["x"], [], []]), maxOngoing: 10, maxQueued: -1)
        var seen = Set<String>()
        for index in 0..<20 {
            seen.insert(RequestRouter.chosen(remote, remote.acquire(model: "m\(index)", using: &generator))!)
            remote = RequestRouter(replicas: self.replicas([["x"], [], []]), maxOngoing: 10, maxQueued: -1)
        }
        #expect(seen == ["r1", "r2"])
    }

    @Test("a model routed once sticks to its replica; requests without a model route as before")
    func sticks() {
        var generator = SeededGenerator(seed: 3)
        var router = RequestRouter(replicas: self.replicas([[], [], [], []]), maxOngoing: 100, maxQueued: -1)
        var homes: [String: Set<String>] = [:]
        for round in 0..<200 {
            let model = "m\(round % 4)"
            let id = RequestRouter.chosen(router, router.acquire(model: model, using: &generator))!
            homes[model, default: []].insert(id)
            _ = router.release(id, using: &generator)
        }
        // Each of the 4 models went to one replica, a different one each.
        #expect(homes.values.allSatisfy { $0.count == 1 })
        #expect(Set(homes.values.flatMap { $0 }).count == 4)
        var spread = Set<String>()
        for _ in 0..<100 {
            let id = RequestRouter.chosen(router, router.acquire(using: &generator))!
            spread.insert(id)
            _ = router.release(id, using: &generator)
        }
        #expect(spread.count == 4)
    }

    @Test("a waiting request woken by a freed slot keeps its model preference")
    func waitingKeepsModel() {
        var generator = SeededGenerator(seed: 4)
        var router = RequestRouter(replicas: self.replicas([["a"], ["b"]]), maxOngoing: 1, maxQueued: -1)
        #expect(RequestRouter.chosen(router, router.acquire(model: "a", using: &generator)) == "r0")
        #expect(RequestRouter.chosen(router, router.acquire(model: "b", using: &generator)) == "r1")
        #expect(router.acquire(model: "a", using: &generator) == .wait(0))
        // r1 frees first: the waiting "a" request takes it (nothing else has room), then r0
        // frees with nobody waiting.
        #expect(router.release("r1", using: &generator) == [.replica(waiter: 0, index: 1)])
        #expect(router.replicas[1].models == ["a", "b"])
    }

    @Test("a newer table's reported models replace what the router assumed")
    func tableReplaces() {
        var generator = SeededGenerator(seed: 5)
        var router = RequestRouter(replicas: self.replicas([[], []]), maxOngoing: 10, maxQueued: -1, version: 1)
        let first = RequestRouter.chosen(router, router.acquire(model: "a", using: &generator))!
        _ = router.update(
            replicas: self.replicas([[], ["a"]]), maxOngoing: 10, maxQueued: -1, unavailable: nil, version: 2,
            using: &generator)
        #expect(RequestRouter.chosen(router, router.acquire(model: "a", using: &generator)) == "r1")
        _ = first
    }

    @Test("the LRU evicts the least recently used past its capacity")
    func lru() {
        var lru = ModelLRU(capacity: 3)
        #expect(lru.use("a") == .init(hit: false, evicted: []))
        _ = lru.use("b")
        _ = lru.use("c")
        #expect(lru.use("a") == .init(hit: true, evicted: []))
        #expect(lru.use("d") == .init(hit: false, evicted: ["b"]))
        #expect(lru.ids == ["c", "a", "d"])
        #expect(lru.setCapacity(1) == ["c", "a"])
        #expect(lru.remove("d") && lru.ids.isEmpty)
        #expect(Multiplexing.maxModels(userConfig: ["max_num_models_per_replica": 5]) == 5)
        #expect(Multiplexing.maxModels(userConfig: nil) == 3)
    }
}
