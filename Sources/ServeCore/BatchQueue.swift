/// How `BatchQueue` forms batches, with Ray's defaults: `max_batch_size` 10,
/// `batch_wait_timeout_s` 0.01, `max_concurrent_batches` 1.
public struct BatchConfiguration: Sendable, Hashable {
    public var maxBatchSize: Int
    public var batchWaitTimeout: Duration
    public var maxConcurrentBatches: Int

    public static let defaultMaxBatchSize = 10
    public static let defaultBatchWaitTimeout = Duration.milliseconds(10)
    public static let defaultMaxConcurrentBatches = 1

    public init(
        maxBatchSize: Int = Self.defaultMaxBatchSize,
        batchWaitTimeout: Duration = Self.defaultBatchWaitTimeout,
        maxConcurrentBatches: Int = Self.defaultMaxConcurrentBatches
    ) {
        self.maxBatchSize = max(1, maxBatchSize)
        self.batchWaitTimeout = max(.zero, batchWaitTimeout)
        self.maxConcurrentBatches = max(1, maxConcurrentBatches)
    }
}

/// Ray Serve's `@serve.batch` as a value: which waiting calls form a batch, and when. No I/O;
/// time is an input (`now`), so it is tested on a fake clock. `Serve.Batcher` keeps one behind a
/// lock and only carries out what its methods return: run a batch, wake it at an instant.
///
/// Rules (DESIGN.md "Batching, multiplexing", PEERS.md "Milestone 2"):
/// - calls wait in arrival order; a batch takes the oldest, at most `maxBatchSize` of them;
/// - a batch runs when `maxBatchSize` calls wait, or when the oldest has waited
///   `batchWaitTimeout`, and only while fewer than `maxConcurrentBatches` batches run (a call
///   that waited past the timeout for a free slot goes in the next batch at once);
/// - a call cancelled while it waits leaves the queue (it is in no batch); one cancelled while
///   its batch runs does not stop the batch (the driver drops its result);
/// - the configuration may change at any time (`reconfigure`): it applies to the next batch.
///
/// A replica admits at most `max_ongoing_requests` calls, so a batch can never hold more than
/// that (Ray's trap, ray-project/ray#43288): the config validator warns when `max_batch_size`
/// is above it, and the README says to set `max_ongoing_requests` to at least
/// `max_batch_size × max_concurrent_batches`.
public struct BatchQueue<Instant: InstantProtocol>: Sendable where Instant.Duration == Duration {
    public typealias Configuration = BatchConfiguration

    public enum Action: Sendable, Hashable {
        /// Run these calls (by number, oldest first) as batch `batch`; report `finished(batch:)`.
        case run(batch: Int, calls: [Int])
        /// Call `tick(now:)` at this instant (it replaces any wake asked for before).
        case wake(at: Instant)
    }

    private struct Waiting: Sendable {
        var call: Int
        var since: Instant
    }

    public private(set) var configuration: Configuration
    private var queue: [Waiting] = []
    private var running: Set<Int> = []
    private var nextCall = 0
    private var nextBatch = 0
    /// The last wake asked for (nil: none pending).
    private var wakeAt: Instant?

    public init(configuration: Configuration = Configuration()) {
        self.configuration = configuration
    }

    /// Calls waiting for a batch.
    public var waiting: Int { self.queue.count }
    /// Batches running now.
    public var runningBatches: Int { self.running.count }

    /// A new call: its number, and what to do.
    public mutating func enqueue(now: Instant) -> (call: Int, actions: [Action]) {
        let call = self.nextCall
        self.nextCall += 1
        self.queue.append(Waiting(call: call, since: now))
        return (call, self.step(now: now))
    }

    /// A waiting call gave up: it leaves the queue. `removed` is false when it was not waiting
    /// (its batch runs already, or it is unknown): the batch goes on and its result is dropped.
    public mutating func cancel(_ call: Int, now: Instant) -> (removed: Bool, actions: [Action]) {
        guard let index = self.queue.firstIndex(where: { $0.call == call }) else { return (false, []) }
        self.queue.remove(at: index)
        return (true, self.step(now: now))
    }

    /// The wake asked for has come.
    public mutating func tick(now: Instant) -> [Action] {
        self.wakeAt = nil
        return self.step(now: now)
    }

    /// Batch `batch` ended (its callers have their results): its slot is free.
    public mutating func finished(batch: Int, now: Instant) -> [Action] {
        guard self.running.remove(batch) != nil else { return [] }
        return self.step(now: now)
    }

    /// New settings, for the batches formed from now on (running ones are left alone).
    public mutating func reconfigure(_ configuration: Configuration, now: Instant) -> [Action] {
        self.configuration = configuration
        self.wakeAt = nil
        return self.step(now: now)
    }

    private mutating func step(now: Instant) -> [Action] {
        var actions: [Action] = []
        let size = self.configuration.maxBatchSize
        while self.running.count < self.configuration.maxConcurrentBatches, let first = self.queue.first {
            let full = self.queue.count >= size
            let due = now >= first.since.advanced(by: self.configuration.batchWaitTimeout)
            guard full || due else { break }
            let taken = min(size, self.queue.count)
            let calls = self.queue.prefix(taken).map(\.call)
            self.queue.removeFirst(taken)
            let batch = self.nextBatch
            self.nextBatch += 1
            self.running.insert(batch)
            actions.append(.run(batch: batch, calls: calls))
        }
        // A timer only while a slot is free: otherwise a batch ending is the next event.
        if self.running.count < self.configuration.maxConcurrentBatches, let first = self.queue.first {
            let deadline = first.since.advanced(by: self.configuration.batchWaitTimeout)
            if self.wakeAt != deadline {
                self.wakeAt = deadline
                actions.append(.wake(at: deadline))
            }
        }
        return actions
    }
}

extension BatchConfiguration {
    /// The user_config keys read by convention (Ray's `@serve.batch` arguments, set at run time
    /// through `reconfigure`): `max_batch_size`, `batch_wait_timeout_s`, `max_concurrent_batches`.
    /// Keys left out keep `base`'s values; the validator has refused wrong types already.
    public init(userConfig: JSONValue?, base: Self = Self()) {
        self = base
        if let size = userConfig?["max_batch_size"]?.doubleValue {
            self.maxBatchSize = Int(min(max(size, 1), 1_000_000))
        }
        if let seconds = userConfig?["batch_wait_timeout_s"]?.doubleValue {
            self.batchWaitTimeout = .seconds(max(0, min(seconds, 3600)))
        }
        if let count = userConfig?["max_concurrent_batches"]?.doubleValue {
            self.maxConcurrentBatches = Int(min(max(count, 1), 1_000_000))
        }
    }
}
