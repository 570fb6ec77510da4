import NIOConcurrencyHelpers
import ServeCore

/// Runs calls in batches (Ray Serve's `@serve.batch`): each `submit` waits until its call is
/// part of a batch, the batch function gets every input of the batch at once, and each caller
/// gets its own result or error. Decisions are `ServeCore.BatchQueue`'s (Ray's defaults: at
/// most 10 per batch, the first call waits at most 10 ms, one batch at a time); this class keeps
/// it behind a lock, runs batches in tasks of their own and keeps one timer.
///
/// ```swift
/// let batcher = Batcher<String, String>(maxBatchSize: 16) { prompts in try await model.run(prompts) }
/// func handle(_ request: ServeRequest) async throws -> ServeResponse {
///     .text(try await batcher.submit(String(buffer: try await request.body.collect(upTo: 1 << 20))))
/// }
/// func reconfigure(userConfig: JSONValue?) async throws { batcher.reconfigure(userConfig: userConfig) }
/// ```
///
/// A batch never holds more calls than its replica admits: `max_ongoing_requests` (default 5)
/// caps it, so set that to at least `max_batch_size × max_concurrent_batches` (the config
/// validator warns when `user_config.max_batch_size` is above it).
///
/// A caller cancelled while it waits leaves the queue; one cancelled while its batch runs gets
/// `CancellationError` at once, and the batch runs on for the others (its result is dropped).
public final class Batcher<Input: Sendable, Output: Sendable>: Sendable {
    public typealias Configuration = BatchConfiguration
    /// The batch function, answering each input with a result or an error, in order.
    public typealias Function = @Sendable ([Input]) async -> [Result<Output, any Error>]

    private struct State {
        var queue: BatchQueue<ContinuousClock.Instant>
        var inputs: [Int: Input] = [:]
        var waiters: [Int: CheckedContinuation<Output, any Error>] = [:]
        var timer: Task<Void, Never>?
    }

    /// A batch to start, its inputs taken out of the state.
    private struct Run {
        var batch: Int
        var calls: [Int]
        var inputs: [Input]
    }

    private let state: NIOLockedValueBox<State>
    private let function: Function

    /// Batches calls for `function`, which answers each input of a batch with a result or an
    /// error, in order.
    public init(_ configuration: Configuration = Configuration(), results function: @escaping Function) {
        self.state = NIOLockedValueBox(State(queue: BatchQueue(configuration: configuration)))
        self.function = function
    }

    /// Batches calls for `function`, which returns one output per input, in order (a different
    /// count fails every call of the batch); should it throw, every caller of the batch gets the
    /// error.
    public convenience init(
        maxBatchSize: Int = Configuration.defaultMaxBatchSize,
        batchWaitTimeout: Duration = Configuration.defaultBatchWaitTimeout,
        maxConcurrentBatches: Int = Configuration.defaultMaxConcurrentBatches,
        _ function: @escaping @Sendable ([Input]) async throws -> [Output]
    ) {
        let configuration = Configuration(
            maxBatchSize: maxBatchSize, batchWaitTimeout: batchWaitTimeout, maxConcurrentBatches: maxConcurrentBatches)
        self.init(configuration) { inputs in
            do {
                // A wrong count fails the batch in `run`.
                return try await function(inputs).map { .success($0) }
            } catch {
                return inputs.map { _ in .failure(error) }
            }
        }
    }

    deinit {
        self.state.withLockedValue { $0.timer }?.cancel()
    }

    public var configuration: Configuration { self.state.withLockedValue { $0.queue.configuration } }

    /// New settings, from the next batch on (Ray's `set_max_batch_size` and
    /// `set_batch_wait_timeout_s`).
    public func reconfigure(_ configuration: Configuration) {
        let steps = self.state.withLockedValue { state in
            self.steps(state.queue.reconfigure(configuration, now: .now), &state)
        }
        self.perform(steps)
    }

    /// The settings a `user_config` names (`max_batch_size`, `batch_wait_timeout_s`,
    /// `max_concurrent_batches`; keys left out keep their current values): call it from
    /// `Deployment.reconfigure(userConfig:)`.
    public func reconfigure(userConfig: JSONValue?) {
        self.reconfigure(Configuration(userConfig: userConfig, base: self.configuration))
    }

    /// Calls waiting for a batch.
    public var waiting: Int { self.state.withLockedValue { $0.queue.waiting } }

    /// Waits for `input`'s batch to run and returns its own result.
    public func submit(_ input: Input) async throws -> Output {
        let call = NIOLockedValueBox(CallState.notYet)
        return try await withTaskCancellationHandler {
            try await withCheckedThrowingContinuation { (continuation: CheckedContinuation<Output, any Error>) in
                let steps = self.state.withLockedValue { state -> [Run]? in
                    // Under the same lock as the cancellation below reads the number.
                    let cancelled = call.withLockedValue { call -> Bool in
                        if case .cancelled = call { return true }
                        return false
                    }
                    if cancelled { return nil }
                    let (number, actions) = state.queue.enqueue(now: .now)
                    call.withLockedValue { $0 = .waiting(number) }
                    state.inputs[number] = input
                    state.waiters[number] = continuation
                    return self.steps(actions, &state)
                }
                guard let steps else { return continuation.resume(throwing: CancellationError()) }
                self.perform(steps)
            }
        } onCancel: {
            let (continuation, steps) = self.state.withLockedValue {
                state -> (CheckedContinuation<Output, any Error>?, [Run]) in
                let number = call.withLockedValue { call -> Int? in
                    guard case .waiting(let number) = call else {
                        call = .cancelled
                        return nil
                    }
                    return number
                }
                guard let number, let continuation = state.waiters.removeValue(forKey: number) else { return (nil, []) }
                state.inputs[number] = nil
                return (continuation, self.steps(state.queue.cancel(number, now: .now).actions, &state))
            }
            continuation?.resume(throwing: CancellationError())
            self.perform(steps)
        }
    }

    private enum CallState {
        case notYet
        case waiting(Int)
        case cancelled
    }

    /// The batches to start, with their inputs taken out under the lock. A wake replaces the
    /// timer here, under the same lock as the decision: timers set from two threads cannot
    /// land out of order.
    private func steps(_ actions: [BatchQueue<ContinuousClock.Instant>.Action], _ state: inout State) -> [Run] {
        var runs: [Run] = []
        for action in actions {
            switch action {
            case .run(let batch, let calls):
                runs.append(
                    Run(batch: batch, calls: calls, inputs: calls.compactMap { state.inputs.removeValue(forKey: $0) }))
            case .wake(let deadline):
                state.timer?.cancel()
                state.timer = Task {
                    // An event loop's timer: `Task.sleep` may wake a tenth of the wait late.
                    try? await SleepDeployment.sleep(for: deadline - .now)
                    guard !Task.isCancelled else { return }
                    let runs = self.state.withLockedValue { state in self.steps(state.queue.tick(now: .now), &state) }
                    self.perform(runs)
                }
            }
        }
        return runs
    }

    private func perform(_ runs: [Run]) {
        for run in runs {
            // A task of its own: no caller's cancellation reaches the batch.
            Task { await self.run(batch: run.batch, calls: run.calls, inputs: run.inputs) }
        }
    }

    private func run(batch: Int, calls: [Int], inputs: [Input]) async {
        var results = await self.function(inputs)
        if results.count != inputs.count {
            let error = BatchError(
                description: "the batch function returned \(results.count) results for \(inputs.count) inputs")
            results = inputs.map { _ in .failure(error) }
        }
        let (deliveries, steps) = self.state.withLockedValue { state in
            // A caller cancelled meanwhile has no waiter any more: its result is dropped.
            let deliveries = zip(calls, results).compactMap { call, result in
                state.waiters.removeValue(forKey: call).map { ($0, result) }
            }
            return (deliveries, self.steps(state.queue.finished(batch: batch, now: .now), &state))
        }
        for (continuation, result) in deliveries { continuation.resume(with: result) }
        self.perform(steps)
    }
}

/// A batch whose function answered wrongly (not one result per input).
public struct BatchError: Error, Sendable, CustomStringConvertible {
    public var description: String
}

/// Batches calls whose answers stream (Ray Serve's `@serve.batch` on a generator): the batch
/// function writes pieces for each input as they come (an LLM's tokens, step by step for the
/// whole batch) and each caller reads its own stream. The batch holds its slot of
/// `max_concurrent_batches` until the function returns; every stream still open then ends
/// (with the function's error, if it threw).
///
/// ```swift
/// let generate = StreamingBatcher<String, String>(maxBatchSize: 8) { prompts, out in
///     for _ in 0..<16 {
///         out.yield(await model.step(prompts))       // one token per prompt, each to its caller
///     }
/// }
/// func handle(_ request: ServeRequest) async throws -> ServeResponse {
///     let tokens = generate.stream(request.query("prompt") ?? "")
///     return .eventStream { events in for try await token in tokens { try await events.send(token) } }
/// }
/// ```
///
/// A caller that stops reading (its client left) leaves the queue if its batch has not begun;
/// otherwise the batch goes on and what is written for it is dropped (`isListening` says so).
public final class StreamingBatcher<Input: Sendable, Output: Sendable>: Sendable {
    public typealias Function = @Sendable ([Input], BatchStreams<Output>) async throws -> Void

    private let batcher: Batcher<(Input, BatchStreams<Output>.Caller), Void>

    public init(_ configuration: BatchConfiguration = BatchConfiguration(), _ function: @escaping Function) {
        self.batcher = Batcher(configuration) { calls in
            let streams = BatchStreams(calls.map(\.1))
            do {
                try await function(calls.map(\.0), streams)
                streams.finishAll(throwing: nil)
            } catch {
                streams.finishAll(throwing: error)
            }
            return calls.map { _ in .success(()) }
        }
    }

    public convenience init(
        maxBatchSize: Int = BatchConfiguration.defaultMaxBatchSize,
        batchWaitTimeout: Duration = BatchConfiguration.defaultBatchWaitTimeout,
        maxConcurrentBatches: Int = BatchConfiguration.defaultMaxConcurrentBatches,
        _ function: @escaping Function
    ) {
        self.init(
            BatchConfiguration(
                maxBatchSize: maxBatchSize, batchWaitTimeout: batchWaitTimeout,
                maxConcurrentBatches: maxConcurrentBatches),
            function)
    }

    public var configuration: BatchConfiguration { self.batcher.configuration }
    public func reconfigure(_ configuration: BatchConfiguration) { self.batcher.reconfigure(configuration) }
    public func reconfigure(userConfig: JSONValue?) { self.batcher.reconfigure(userConfig: userConfig) }
    /// Calls waiting for a batch.
    public var waiting: Int { self.batcher.waiting }

    /// `input`'s answer, piece by piece, once its batch runs.
    public func stream(_ input: Input) -> AsyncThrowingStream<Output, any Error> {
        let (stream, continuation) = AsyncThrowingStream<Output, any Error>.makeStream()
        let caller = BatchStreams<Output>.Caller(continuation)
        let batcher = self.batcher
        let call = Task {
            do {
                try await batcher.submit((input, caller))
            } catch {
                // It left the queue (cancelled): its stream ends.
                continuation.finish(throwing: error)
            }
        }
        continuation.onTermination = { _ in
            caller.listening.withLockedValue { $0 = false }
            call.cancel()
        }
        return stream
    }
}

/// The callers' streams of one batch, by the index of their input.
public final class BatchStreams<Output: Sendable>: Sendable {
    /// One caller's stream, and whether it still reads.
    final class Caller: Sendable {
        let continuation: AsyncThrowingStream<Output, any Error>.Continuation
        let listening = NIOLockedValueBox(true)

        init(_ continuation: AsyncThrowingStream<Output, any Error>.Continuation) {
            self.continuation = continuation
        }
    }

    private let callers: [Caller]

    init(_ callers: [Caller]) {
        self.callers = callers
    }

    public var count: Int { self.callers.count }

    /// Whether input `index`'s caller still reads (false once it left or its stream ended).
    public func isListening(_ index: Int) -> Bool {
        self.callers[index].listening.withLockedValue { $0 }
    }

    /// One piece for input `index`'s caller (dropped if it left).
    public func yield(_ output: Output, to index: Int) {
        guard self.isListening(index) else { return }
        if case .terminated = self.callers[index].continuation.yield(output) {
            self.callers[index].listening.withLockedValue { $0 = false }
        }
    }

    /// One step for the whole batch: a piece per input, in order (nil: nothing for that one).
    public func yield(_ step: [Output?]) {
        for (index, output) in step.enumerated() where index < self.count {
            if let output { self.yield(output, to: index) }
        }
    }

    /// Ends input `index`'s stream (with an error, or cleanly) before the batch ends.
    public func finish(_ index: Int, throwing error: (any Error)? = nil) {
        let wasListening = self.callers[index].listening.withLockedValue { listening in
            defer { listening = false }
            return listening
        }
        if wasListening { self.callers[index].continuation.finish(throwing: error) }
    }

    func finishAll(throwing error: (any Error)?) {
        for index in 0..<self.count { self.finish(index, throwing: error) }
    }
}
