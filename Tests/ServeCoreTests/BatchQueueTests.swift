import Testing

@testable import ServeCore

/// A clock's instant the tests move by hand.
struct FakeInstant: InstantProtocol {
    var offset: Duration
    func advanced(by duration: Duration) -> FakeInstant { FakeInstant(offset: self.offset + duration) }
    func duration(to other: FakeInstant) -> Duration { other.offset - self.offset }
    static func < (lhs: FakeInstant, rhs: FakeInstant) -> Bool { lhs.offset < rhs.offset }
    static func ms(_ value: Int) -> FakeInstant { FakeInstant(offset: .milliseconds(value)) }
}

@Suite("Batch queue")
struct BatchQueueTests {
    typealias Queue = BatchQueue<FakeInstant>

    private func runs(_ actions: [Queue.Action]) -> [[Int]] {
        actions.compactMap { if case .run(_, let calls) = $0 { calls } else { nil } }
    }

    private func wakes(_ actions: [Queue.Action]) -> [FakeInstant] {
        actions.compactMap { if case .wake(let at) = $0 { at } else { nil } }
    }

    @Test("Ray's defaults: 10 per batch, 10 ms, one batch at a time")
    func defaults() {
        let configuration = Queue.Configuration()
        #expect(configuration.maxBatchSize == 10)
        #expect(configuration.batchWaitTimeout == .milliseconds(10))
        #expect(configuration.maxConcurrentBatches == 1)
        let fromConfig = Queue.Configuration(userConfig: [
            "max_batch_size": 16, "batch_wait_timeout_s": 0.25, "other": "x",
        ])
        #expect(fromConfig == Queue.Configuration(maxBatchSize: 16, batchWaitTimeout: .milliseconds(250)))
        #expect(Queue.Configuration(userConfig: nil) == configuration)
    }

    @Test("a full batch runs at once, without waiting for the timeout")
    func fullBatch() {
        var queue = Queue(configuration: .init(maxBatchSize: 4, batchWaitTimeout: .seconds(60)))
        var actions: [Queue.Action] = []
        for _ in 0..<3 {
            actions = queue.enqueue(now: .ms(0)).actions
            #expect(self.runs(actions).isEmpty)
        }
        actions = queue.enqueue(now: .ms(1)).actions
        #expect(actions == [.run(batch: 0, calls: [0, 1, 2, 3])])
        #expect(queue.waiting == 0)
        #expect(queue.runningBatches == 1)
    }

    @Test("a batch runs when its first call has waited the timeout, with what has come")
    func timeout() {
        var queue = Queue(configuration: .init(maxBatchSize: 10, batchWaitTimeout: .milliseconds(10)))
        #expect(self.wakes(queue.enqueue(now: .ms(100)).actions) == [.ms(110)])
        // A later call does not move the deadline: the first call's wait counts.
        #expect(queue.enqueue(now: .ms(105)).actions.isEmpty)
        #expect(queue.tick(now: .ms(109)) == [.wake(at: .ms(110))])
        #expect(self.runs(queue.tick(now: .ms(110))) == [[0, 1]])
        // The next call starts a new wait.
        #expect(self.wakes(queue.enqueue(now: .ms(111)).actions).isEmpty)
        // ... and with the only slot busy, no timer: the batch's end is the next event.
        #expect(self.runs(queue.finished(batch: 0, now: .ms(125))) == [[2]])
    }

    @Test("a call that waited past the timeout for a slot goes in the next batch at once")
    func concurrency() {
        var queue = Queue(
            configuration: .init(maxBatchSize: 2, batchWaitTimeout: .milliseconds(10), maxConcurrentBatches: 2))
        _ = queue.enqueue(now: .ms(0))
        #expect(self.runs(queue.enqueue(now: .ms(0)).actions) == [[0, 1]])
        _ = queue.enqueue(now: .ms(0))
        #expect(self.runs(queue.enqueue(now: .ms(0)).actions) == [[2, 3]])
        #expect(queue.runningBatches == 2)
        // Both slots busy: full batches wait for a slot.
        for _ in 0..<3 { #expect(self.runs(queue.enqueue(now: .ms(1)).actions).isEmpty) }
        #expect(self.runs(queue.finished(batch: 1, now: .ms(50))) == [[4, 5]])
        // Call 6 waited past its timeout: it runs alone when the next slot frees.
        #expect(self.runs(queue.finished(batch: 0, now: .ms(51))) == [[6]])
        #expect(queue.finished(batch: 0, now: .ms(52)).isEmpty)  // repeated: ignored
    }

    @Test("a cancelled waiting call leaves the queue; a running one does not stop its batch")
    func cancellation() {
        var queue = Queue(configuration: .init(maxBatchSize: 3, batchWaitTimeout: .milliseconds(10)))
        let first = queue.enqueue(now: .ms(0)).call
        let second = queue.enqueue(now: .ms(4)).call
        // The first leaves: the deadline is now the second's.
        let cancelled = queue.cancel(first, now: .ms(5))
        #expect(cancelled.removed)
        #expect(cancelled.actions == [.wake(at: .ms(14))])
        #expect(queue.tick(now: .ms(10)) == [.wake(at: .ms(14))])
        let batch = queue.tick(now: .ms(14))
        #expect(self.runs(batch) == [[second]])
        // Cancelled while its batch runs: not in the queue, nothing to do; the batch goes on.
        #expect(queue.cancel(second, now: .ms(15)) == (false, []))
        #expect(queue.runningBatches == 1)
    }

    @Test("settings changed at run time apply to the next batch")
    func reconfigure() {
        var queue = Queue(configuration: .init(maxBatchSize: 10, batchWaitTimeout: .seconds(10)))
        for _ in 0..<3 { _ = queue.enqueue(now: .ms(0)) }
        #expect(
            self.runs(queue.reconfigure(.init(maxBatchSize: 2, batchWaitTimeout: .seconds(10)), now: .ms(1))) == [
                [0, 1]
            ])
        // The one left waits under the new timeout once a slot is free.
        let actions = queue.reconfigure(
            .init(maxBatchSize: 2, batchWaitTimeout: .milliseconds(5), maxConcurrentBatches: 2), now: .ms(2))
        #expect(actions == [.wake(at: .ms(5))])
        #expect(self.runs(queue.tick(now: .ms(5))) == [[2]])
    }

    @Test("randomized: every call runs exactly once, in order, in batches within the limits")
    func randomized() {
        var generator = SeededGenerator(seed: 11)
        for _ in 0..<50 {
            let configuration = Queue.Configuration(
                maxBatchSize: Int.random(in: 1...6, using: &generator),
                batchWaitTimeout: .milliseconds(Int.random(in: 0...20, using: &generator)),
                maxConcurrentBatches: Int.random(in: 1...3, using: &generator))
            var queue = Queue(configuration: configuration)
            var now = 0
            var ran: [Int] = []
            var cancelled: Set<Int> = []
            var running: [Int] = []
            var wake: Int?
            var enqueued: [Int] = []
            func apply(_ actions: [Queue.Action]) {
                for action in actions {
                    switch action {
                    case .run(let batch, let calls):
                        #expect(calls.count <= configuration.maxBatchSize && !calls.isEmpty)
                        ran += calls
                        running.append(batch)
                        #expect(running.count <= configuration.maxConcurrentBatches)
                    case .wake(let at):
                        wake = Int(at.offset / .milliseconds(1))
                    }
                }
            }
            for _ in 0..<200 {
                now += Int.random(in: 0...3, using: &generator)
                if let due = wake, due <= now {
                    wake = nil
                    apply(queue.tick(now: .ms(now)))
                }
                switch Int.random(in: 0..<10, using: &generator) {
                case 0..<6:
                    let (call, actions) = queue.enqueue(now: .ms(now))
                    enqueued.append(call)
                    apply(actions)
                case 6..<8 where !running.isEmpty:
                    let batch = running.remove(at: Int.random(in: 0..<running.count, using: &generator))
                    apply(queue.finished(batch: batch, now: .ms(now)))
                case 8 where !enqueued.isEmpty:
                    let call = enqueued.randomElement(using: &generator)!
                    let result = queue.cancel(call, now: .ms(now))
                    if result.removed { cancelled.insert(call) }
                    apply(result.actions)
                default:
                    break
                }
            }
            // Drain: finish everything, firing wakes, until nothing waits.
            while queue.waiting > 0 || !running.isEmpty {
                now += 50
                for batch in running {
                    running.removeAll { $0 == batch }
                    apply(queue.finished(batch: batch, now: .ms(now)))
                }
                apply(queue.tick(now: .ms(now)))
            }
            #expect(ran == ran.sorted(), "batches keep arrival order")
            #expect(Set(ran).count == ran.count, "no call runs twice")
            #expect(Set(ran).union(cancelled) == Set(enqueued) && Set(ran).isDisjoint(with: cancelled))
        }
    }
}

@Suite("Batching and multiplexing config")
struct BatchingConfigTests {
    private func config(_ deployment: String) throws -> ServeConfig {
        try ConfigParser.parse(
            """
            applications:
              - name: a
                route_prefix: /a
                deployments:
                  - \(deployment)
            """, knownHandlers: ["batched"])
    }

    @Test("a max_batch_size above max_ongoing_requests is deployed with a warning naming its path")
    func unreachableBatchSize() throws {
        let capped = try self.config("{name: M, handler: batched, user_config: {max_batch_size: 16}}")
        let warnings = ConfigParser.warnings(for: capped)
        #expect(warnings.map(\.path) == ["applications[0].deployments[0].user_config.max_batch_size"])
        #expect(warnings.first?.message.contains("max_ongoing_requests (5)") == true)
        #expect(warnings.first?.deployment == DeploymentID(app: "a", name: "M"))
        let fits = try self.config(
            "{name: M, handler: batched, max_ongoing_requests: 32, user_config: {max_batch_size: 16}}")
        #expect(ConfigParser.warnings(for: fits).isEmpty)
        #expect(ConfigParser.warnings(for: try self.config("{name: M, handler: batched}")).isEmpty)
    }

    @Test("the conventional user_config keys are checked; the deployment's own are not")
    func conventionalKeys() {
        #expect(throws: ConfigError.self) {
            try self.config("{name: M, handler: batched, user_config: {max_batch_size: 0}}")
        }
        #expect(throws: ConfigError.self) {
            try self.config("{name: M, handler: batched, user_config: {batch_wait_timeout_s: fast}}")
        }
        #expect(throws: ConfigError.self) {
            try self.config("{name: M, handler: batched, user_config: {max_num_models_per_replica: 1.5}}")
        }
        #expect((try? self.config("{name: M, handler: batched, user_config: {max_batch_size: 4, mine: [1]}}")) != nil)
    }
}
