/// Resources a peer reports (a worker's totals when it registers, the grants of the replicas it
/// says it runs) are checked before the controller does arithmetic on them: a negative amount,
/// or one so large that sums over a cluster would overflow `Int64` (a trap, taking the head
/// down), is refused rather than trusted.
extension ResourceSet {
    /// The most of any one resource a node may offer: 10^13 whole units (10 TB of memory, in
    /// bytes), so that the sum over a thousand such nodes still fits in `Int64` units.
    public static let maxReportedQuantity = ResourceQuantity(units: 10_000_000_000_000 * ResourceQuantity.scale)

    /// Why a peer's report of these resources cannot be taken, or nil when it can.
    public var reportProblem: String? {
        for (name, quantity) in self.quantities.sorted(by: { $0.key < $1.key }) {
            if quantity < .zero { return "\(name) is negative (\(quantity))" }
            if Self.maxReportedQuantity < quantity {
                return "\(name) is more than \(Self.maxReportedQuantity) (\(quantity))"
            }
        }
        return nil
    }
}
