"""The deletion ledger: every removal recorded, what the removals cost in privacy, and model
files saved together with their records.

Four modules, one idea each; everything callers use is re-exported here:

- :mod:`.store`: the SQLite store of removals (:class:`Ledger`, lineages, ancestry);
- :mod:`.entries`: what a row records and its one constructor (:func:`entry_from_record`
  of a removal record, on :func:`removal_entry`);
- :mod:`.privacy`: the (epsilon, delta) a sequence of removals has spent under basic
  sequential composition, or no guarantee (:func:`privacy_spent`, :func:`privacy_cost`);
- :mod:`.files`: the crash-safe protocol that commits a model file and its row together or
  not at all (:func:`save_and_record`, reconciliation of interrupted saves).

It never imports a UI library; torch is used only to serialise a checkpoint.
"""
from .files import ReconcileReport, TEMP_SUFFIX, save_and_record, write_and_record
from .privacy import COMPOSITION, PrivacyCost, is_certified, privacy_cost, privacy_spent
from .entries import METRIC_KEYS, LedgerRow, RemovalEntry, entry_from_record, removal_entry
from .store import LEDGER_FILENAME, SCHEMA_VERSION, Ledger, LedgerError, default_ledger_path

__all__ = ["COMPOSITION", "LEDGER_FILENAME", "METRIC_KEYS", "SCHEMA_VERSION", "TEMP_SUFFIX",
           "Ledger", "LedgerError", "LedgerRow", "PrivacyCost", "ReconcileReport",
           "RemovalEntry", "default_ledger_path", "entry_from_record", "is_certified",
           "privacy_cost", "privacy_spent", "removal_entry", "save_and_record",
           "write_and_record"]
