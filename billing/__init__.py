"""Billing: FX and tax tables now; price book, ledger, holds, budgets and invoices follow."""
