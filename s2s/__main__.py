from s2s.cli import main

main()
