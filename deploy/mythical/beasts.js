// The lab's beasts: one table each.
exports.BEASTS = ['unicorn', 'manticore', 'illithid', 'owlbear', 'beholder'];
