import Foundation

/// Turns SIGINT/SIGTERM into a call (the process does not die on the first one: it drains).
public final class SignalWatcher: @unchecked Sendable {  // the sources are only created and cancelled
    private let sources: [any DispatchSourceSignal]

    public init(signals: [Int32], handler: @escaping @Sendable () -> Void) {
        self.sources = signals.map { number in
            signal(number, SIG_IGN)
            let source = DispatchSource.makeSignalSource(signal: number, queue: .global())
            source.setEventHandler(handler: handler)
            source.resume()
            return source
        }
    }

    deinit {
        for source in self.sources { source.cancel() }
    }
}
