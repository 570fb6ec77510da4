import NIOConcurrencyHelpers
import Serve
import Testing

/// The `Batcher` driver with real tasks (its decisions are `BatchQueueTests`' on a fake clock).
/// The waits here are events, not sleeps: a batch function that signals it started and waits for
/// a gate, and timeouts of a minute where only a full batch may run.
@Suite("Batcher")
struct BatcherTests {
    /// The batches a function saw.
    final class Seen: Sendable {
        let batches = NIOLockedValueBox<[[Int]]>([])
        func add(_ batch: [Int]) { self.batches.withLockedValue { $0.append(batch) } }
        var all: [[Int]] { self.batches.withLockedValue { $0 } }
    }

    /// Opens once; waiters before and after pass.
    final class Gate: Sendable {
        private let state = NIOLockedValueBox<(open: Bool, waiters: [CheckedContinuation<Void, Never>])>((false, []))
        func wait() async {
            await withCheckedContinuation { continuation in
                let open = self.state.withLockedValue { state -> Bool in
                    if !state.open { state.waiters.append(continuation) }
                    return state.open
                }
                if open { continuation.resume() }
            }
        }
        func open() {
            let waiters = self.state.withLockedValue { state in
                state.open = true
                defer { state.waiters = [] }
                return state.waiters
            }
            for waiter in waiters { waiter.resume() }
        }
    }

    @Test("a full batch runs at once, and each caller gets its own result")
    func fullBatch() async throws {
        let seen = Seen()
        let batcher = Batcher<Int, Int>(maxBatchSize: 8, batchWaitTimeout: .seconds(60)) { inputs in
            seen.add(inputs)
            return inputs.map { $0 * 10 }
        }
        let results = try await withThrowingTaskGroup(of: (Int, Int).self) { group in
            for value in 0..<8 { group.addTask { (value, try await batcher.submit(value)) } }
            return try await group.reduce(into: [:]) { $0[$1.0] = $1.1 }
        }
        #expect(results == Dictionary(uniqueKeysWithValues: (0..<8).map { ($0, $0 * 10) }))
        #expect(seen.all.count == 1 && seen.all.first?.sorted() == Array(0..<8))
    }

    @Test("a lone call runs when the timeout passes, without a full batch")
    func timeout() async throws {
        let batcher = Batcher<Int, Int>(maxBatchSize: 100, batchWaitTimeout: .milliseconds(20)) { $0.map { $0 + 1 } }
        let started = ContinuousClock.now
        #expect(try await batcher.submit(41) == 42)
        #expect(ContinuousClock.now - started >= .milliseconds(20))
        // Changed at run time: a batch of one now runs at once.
        batcher.reconfigure(userConfig: ["max_batch_size": 1, "batch_wait_timeout_s": 60])
        #expect(batcher.configuration.maxBatchSize == 1)
        #expect(try await batcher.submit(1) == 2)
    }

    @Test("errors: each caller gets its own; a throwing function fails the whole batch; a wrong count fails it too")
    func errors() async throws {
        struct Odd: Error {}
        let perItem = Batcher<Int, Int>(.init(maxBatchSize: 4, batchWaitTimeout: .seconds(60))) { inputs in
            inputs.map { $0 % 2 == 0 ? .success($0) : .failure(Odd()) }
        }
        let outcomes = await withTaskGroup(of: (Int, Bool).self) { group in
            for value in 0..<4 { group.addTask { (value, (try? await perItem.submit(value)) != nil) } }
            return await group.reduce(into: [:]) { $0[$1.0] = $1.1 }
        }
        #expect(outcomes == [0: true, 1: false, 2: true, 3: false])

        let throwing = Batcher<Int, Int>(maxBatchSize: 1) { _ in throw Odd() }
        await #expect(throws: Odd.self) { try await throwing.submit(1) }
        let short = Batcher<Int, Int>(maxBatchSize: 1) { _ in [] }
        await #expect(throws: BatchError.self) { try await short.submit(1) }
    }

    @Test("a caller cancelled while its batch runs gets CancellationError; the batch runs on for the others")
    func cancelledWhileRunning() async throws {
        let seen = Seen()
        let started = Gate()
        let release = Gate()
        let batcher = Batcher<Int, Int>(maxBatchSize: 2, batchWaitTimeout: .seconds(60)) { inputs in
            seen.add(inputs)
            started.open()
            await release.wait()
            return inputs
        }
        let leaving = Task { try await batcher.submit(1) }
        let staying = Task { try await batcher.submit(2) }
        await started.wait()
        leaving.cancel()
        await #expect(throws: CancellationError.self) { try await leaving.value }
        release.open()
        #expect(try await staying.value == 2)
        #expect(seen.all.count == 1 && seen.all[0].sorted() == [1, 2])
    }

    @Test("a caller cancelled while it waits leaves the queue and is in no batch")
    func cancelledWhileWaiting() async throws {
        let seen = Seen()
        let batcher = Batcher<Int, Int>(maxBatchSize: 2, batchWaitTimeout: .seconds(60)) { inputs in
            seen.add(inputs)
            return inputs
        }
        let leaving = Task { try await batcher.submit(1) }
        while batcher.waiting == 0 { await Task.yield() }
        leaving.cancel()
        await #expect(throws: CancellationError.self) { try await leaving.value }
        #expect(batcher.waiting == 0)
        // The next two make a full batch without it.
        async let a = batcher.submit(2)
        async let b = batcher.submit(3)
        #expect(try await [a, b] == [2, 3])
        #expect(seen.all.map { $0.sorted() } == [[2, 3]])
    }

    @Test("streamed: each caller reads its own pieces as the batch writes them, step by step")
    func streamed() async throws {
        let seen = Seen()
        let batcher = StreamingBatcher<Int, String>(maxBatchSize: 3, batchWaitTimeout: .seconds(60)) { inputs, out in
            seen.add(inputs)
            for step in 0..<3 { out.yield(inputs.map { "\($0)-\(step)" }) }
        }
        let pieces = try await withThrowingTaskGroup(of: (Int, [String]).self) { group in
            for value in 0..<3 {
                group.addTask { (value, try await batcher.stream(value).reduce(into: []) { $0.append($1) }) }
            }
            return try await group.reduce(into: [:]) { $0[$1.0] = $1.1 }
        }
        #expect(pieces == [0: ["0-0", "0-1", "0-2"], 1: ["1-0", "1-1", "1-2"], 2: ["2-0", "2-1", "2-2"]])
        #expect(seen.all.count == 1)

        struct Broke: Error {}
        let failing = StreamingBatcher<Int, String>(maxBatchSize: 1) { inputs, out in
            out.yield(["first"])
            throw Broke()
        }
        var received: [String] = []
        await #expect(throws: Broke.self) {
            for try await piece in failing.stream(1) { received.append(piece) }
        }
        #expect(received == ["first"])
    }

    @Test("streamed: a caller that stops reading does not stop the batch; the others get every piece")
    func streamedCallerLeaves() async throws {
        let release = Gate()
        let listening = NIOLockedValueBox<[Int: Bool]>([:])
        let batcher = StreamingBatcher<Int, Int>(maxBatchSize: 2, batchWaitTimeout: .seconds(60)) { inputs, out in
            out.yield(inputs.map { $0 * 10 })
            await release.wait()
            listening.withLockedValue { listening in
                for (index, input) in inputs.enumerated() { listening[input] = out.isListening(index) }
            }
            out.yield(inputs.map { $0 * 10 + 1 })
        }
        let leaving = Task {
            for try await piece in batcher.stream(1) { return piece }  // reads one piece, then leaves
            return -1
        }
        let staying = Task { try await batcher.stream(2).reduce(into: [Int]()) { $0.append($1) } }
        #expect(try await leaving.value == 10)
        release.open()
        #expect(try await staying.value == [20, 21])
        #expect(listening.withLockedValue { $0 } == [1: false, 2: true])
    }
}
