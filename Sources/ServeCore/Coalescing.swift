extension Array {
    /// The last element for each key, in the order of those last elements: what a backlog of
    /// updates comes to when only each subject's latest state matters (a worker's replica state
    /// reports while the head is away).
    public func latestPerKey<Key: Hashable>(_ key: (Element) -> Key) -> [Element] {
        var seen = Set<Key>()
        var kept: [Element] = []
        for element in self.reversed() where seen.insert(key(element)).inserted {
            kept.append(element)
        }
        return kept.reversed()
    }
}
